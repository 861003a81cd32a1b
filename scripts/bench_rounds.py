"""Alternating rounds over contenders that each live in their own worker process.

Every contender (scripts/bench_worker.py) is started once, loads and warms up, and then all of
them run in rounds: A B C ... A B C ..., so a drift of the machine (thermal, another job) hits
every contender alike, and the ratio of two contenders can be taken *within* a round (paired)
before its median over rounds. Each round is wrapped in the load guard (scripts/load_guard.py).
The per-contender result keeps `runtime.bench`'s keys (ttft_s, vision_s, prefill_s,
decode_tokens_per_s as median/min/max/iqr/n, peak_rss_mib, ...) so its table and plot apply.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "bench_worker.py"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class WorkerFailed(RuntimeError):
    pass


@dataclass
class Contender:
    """`name` is unique in a run; `group` is hf_full | hf_papers | ours; `spec` goes to the worker."""

    name: str
    group: str
    method: str
    keep: int | None
    spec: dict[str, Any]
    samples: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    values = sorted(values)
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "iqr": q[2] - q[0],
            "n": len(values)}


class Worker:
    def __init__(self, contender: Contender, threads: int):
        self.contender = contender
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        if threads:
            env.update({v: str(threads) for v in THREAD_VARIABLES})
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench-worker-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, str(WORKER), json.dumps(contender.spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=ROOT)
        contender.info = self._read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.flush()
            tail = Path(self.log.name).read_text().strip().splitlines()[-12:]
            raise WorkerFailed(f"worker {self.contender.name!r} exited with code {self.proc.returncode}:\n"
                               + "\n".join(tail))
        return json.loads(line)

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def run_rounds(contenders: list[Contender], rounds: int, guard, threads: int, label: str = "") -> None:
    """Starts one worker per contender (one after the other), then `rounds` rounds in the given
    order; fills each contender's `samples` and `info`. Workers are closed on the way out."""
    workers: list[Worker] = []
    try:
        for c in tqdm(contenders, desc=f"{label} loading + warm-up".strip(), unit="contender"):
            workers.append(Worker(c, threads))
        for r in tqdm(range(rounds), desc=f"{label} rounds".strip(), unit="round"):
            with guard.round([w.pid for w in workers], label=f"{label} round {r}".strip()):
                for w in workers:
                    w.contender.samples.append(w.run())
    finally:
        for w in workers:
            w.close()


def summarize(c: Contender, threads: int) -> dict[str, Any]:
    """runtime.bench's result keys for one contender, plus the group, the memory split and the
    last run's tokens (for the agreement checks)."""
    s = c.samples
    ttft = [x["vision_s"] + x["prefill_s"] for x in s]
    tps = [len(x["decode_s"]) / sum(x["decode_s"]) for x in s if x["decode_s"]]
    last = s[-1]  # agreement checks read the samples themselves (kept indices stay out of the JSON)
    out = {
        "name": c.name, "group": c.group, "engine_dir": c.spec.get("engine_dir") or c.spec.get("checkpoint"),
        "backend": c.info.get("backend"), "method": c.method, "keep": c.info.get("visual_tokens"),
        "requested_keep": c.keep, "prompt_tokens": c.info.get("prompt_tokens"), "new_tokens": c.spec["new_tokens"],
        "ttft_s": stats(ttft), "vision_s": stats([x["vision_s"] for x in s]),
        "prefill_s": stats([x["prefill_s"] for x in s]), "decode_tokens_per_s": stats(tps),
        "peak_rss_mib": max(x["hwm_mib"] for x in s),  # during the timed rounds (reset after warm-up)
        "peak_rss_load_mib": c.info.get("peak_rss_load_mib"),  # loading + warm-up
        "rss_loaded_mib": c.info.get("rss_loaded_mib"),
        "peak_rss_reset": c.info.get("peak_reset"),
        "threads": threads or os.cpu_count(), "rounds": len(s),
        "samples_ttft_s": ttft,
        "token_ids": last.get("token_ids"),
    }
    if any("selection_s" in x for x in s):
        out["selection_s"] = stats([x["selection_s"] for x in s if "selection_s" in x])
    return out


def paired_ratio(a: Contender, b: Contender) -> dict[str, float] | None:
    """TTFT(a)/TTFT(b) and decode tok/s (a)/(b) within each round, then median/min/max."""
    if not a.samples or len(a.samples) != len(b.samples):
        return None

    def ttft(x):
        return x["vision_s"] + x["prefill_s"]

    def tps(x):
        return len(x["decode_s"]) / sum(x["decode_s"]) if x["decode_s"] else None

    t = [ttft(x) / ttft(y) for x, y in zip(a.samples, b.samples)]
    d = [tps(x) / tps(y) for x, y in zip(a.samples, b.samples) if tps(x) and tps(y)]
    out = {"ttft": {"median": statistics.median(t), "min": min(t), "max": max(t)}}
    if d:
        out["decode_tokens_per_s"] = {"median": statistics.median(d), "min": min(d), "max": max(d)}
    return out
