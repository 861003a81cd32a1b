#!/usr/bin/env python
"""TTFT and decode speed of the scaled CPU model (scripts/bench_ttft.py's) for --quantize none /
int8 / int4, and the cost of late versus early decode steps before (concat KV cache) and after
(in-place KV cache) the in-place cache.

For every variant an engine directory is built (ONNX graphs, ONNX Runtime), then one child
process per directory generates `--new-tokens` tokens (EOS ignored) `--runs` times after a
warm-up and reports TTFT, overall decode tokens/s, and tokens/s over the first and the last 32
decode steps (tokens 1-32 and 480-512 of a 512-token answer). Target: the late window no more
than 15 % slower than the early one with the in-place cache. Each child's run is one round of
the load guard (scripts/load_guard.py): a result measured while other processes used the machine
is refused (exit 3) unless --allow-noisy writes it marked noisy.

    python scripts/bench_decode.py --runs 3                  # the measurement (quiet machine)
    python scripts/bench_decode.py --dry-run                 # tiny-llava, 48 tokens, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import load_guard  # noqa: E402
from engine_cache import cached_build  # noqa: E402

VARIANTS = (("none", "concat"), ("none", "inplace"), ("int8", "inplace"), ("int4", "inplace"))
WINDOW = 32
PROMPT = "Describe the picture in detail."

CHILD = r"""
import json, resource, statistics, sys
sys.path.insert(0, sys.argv[1])
from runtime.bench import _default_image
from runtime.pipeline import Pipeline
engine, runs, new_tokens, window, prompt, threads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7])
pipe = Pipeline.from_dir(engine, "onnxruntime", threads=threads)
img = _default_image()
pipe.generate(img, prompt, max_new_tokens=min(new_tokens, 16), ignore_eos=True)  # warm-up
rows = []
for _ in range(runs):
    t = pipe.generate(img, prompt, max_new_tokens=new_tokens, ignore_eos=True).timings
    d = t.decode_s
    rows.append({"ttft_s": t.ttft_s, "decode_tps": len(d) / sum(d),
                 "early_tps": window / sum(d[:window]), "late_tps": window / sum(d[-window:])})
print(json.dumps({"runs": rows, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(model: str, method: str, keep: int | None, scheme: str, kv_cache: str, root: Path, random_weights: bool,
          precision: str, max_output_len: int, group: int) -> Path:
    from exporter.build import BuildOptions
    from exporter.build import build as run_build

    out = root / f"{model}-{method}-k{keep or 576}-{precision}-{scheme}-{kv_cache}-o{max_output_len}"
    return cached_build(out, lambda: run_build(BuildOptions(
        model=model, keep=keep, out=out, method=method, random_weights=random_weights, precision=precision,
        backend="onnx", selector="onnx", max_input_len=700, max_output_len=max_output_len, quantize=scheme,
        group_size=group, kv_cache=kv_cache, command="scripts/bench_decode.py")))


def measure(engine: Path, runs: int, new_tokens: int, window: int, threads: int, guard: load_guard.LoadGuard) -> dict:
    with tempfile.TemporaryFile(mode="w+") as errors:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(engine), str(runs), str(new_tokens),
                                 str(window), PROMPT, str(threads)], stdout=subprocess.PIPE, stderr=errors, text=True)
        with guard.round([proc.pid], label=engine.name):
            stdout = proc.stdout.read()
            # exited but not reaped: /proc still holds its CPU time, which the guard counts as ours
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        proc.stdout.close()
        if proc.wait() != 0:
            errors.seek(0)
            raise SystemExit(f"error: benchmark of {engine} failed: {(errors.read().strip().splitlines() or ['?'])[-1]}")
    out = json.loads(stdout.strip().splitlines()[-1])
    med = {k: statistics.median(r[k] for r in out["runs"]) for k in out["runs"][0]}
    med["late_vs_early_slowdown"] = med["early_tps"] / med["late_tps"] - 1
    return {"median": med, "runs": out["runs"], "peak_rss_mib": round(out["peak_rss_mib"], 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default: bench_ttft's llava-1.5-7b-cpu (random weights)")
    p.add_argument("--method", default="hivtp")
    p.add_argument("--keep", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--work", type=Path, default=ROOT / "engines" / "bench-decode")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode_cpu.json")
    p.add_argument("--dry-run", action="store_true", help="tiny-llava, 48 new tokens, 1 run, int4 group 64")
    load_guard.add_arguments(p)
    args = p.parse_args(argv)
    guard = load_guard.from_args(args)
    from bench_ttft import SCALED, register_scaled_spec

    register_scaled_spec()
    if args.dry_run:
        args.model, args.new_tokens, args.runs, args.group_size = "tiny-llava", 48, 1, 64
        args.out = args.work / "decode_dry_run.json"
    model = args.model or SCALED
    random_weights = model not in ("tiny-llava", "tiny-llava-next")
    window = min(WINDOW, args.new_tokens // 3)
    rows = []
    for scheme, kv_cache in VARIANTS:
        engine = build(model, args.method, args.keep, scheme, kv_cache, args.work, random_weights, args.precision,
                       args.new_tokens + 8, args.group_size)
        r = measure(engine, args.runs, args.new_tokens, window, args.threads, guard)
        m = r["median"]
        row = {"quantize": scheme, "kv_cache": kv_cache, "engine_dir": str(engine),
               "decoder_bytes": (engine / "decoder.onnx.data").stat().st_size, **r}
        rows.append(row)
        print(f"{scheme:<5} {kv_cache:<8} TTFT {m['ttft_s'] * 1e3:8.1f} ms  decode {m['decode_tps']:7.2f} tok/s  "
              f"tokens 1-{window} {m['early_tps']:7.2f}  last {window} {m['late_tps']:7.2f} tok/s  "
              f"late slower by {m['late_vs_early_slowdown']:+.1%}", flush=True)
    report = {"model": model, "random_weights": random_weights,
              "method": args.method, "keep": args.keep, "precision": args.precision, "group_size": args.group_size,
              "new_tokens": args.new_tokens, "window": window, "backend": "onnxruntime", "runs": args.runs,
              "results": rows}
    guard.stamp(report, "scripts/bench_decode.py", argv)
    busy = guard.refusal()
    if busy:
        print(f"error: {busy}", file=sys.stderr)
        return 3
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
