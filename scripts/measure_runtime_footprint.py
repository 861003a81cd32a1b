#!/usr/bin/env python3
"""What one `python -m runtime generate` costs on the built-in tiny engine: time spent importing
(the sum of the top-level entries of `python -X importtime`, lazy imports during the run
included), time to first token, wall time and peak RSS of the whole process, and which heavy
packages it loaded.

    python scripts/measure_runtime_footprint.py [--runs 5] [--repo DIR --label before ...]
        [--json benchmarks/results/runtime_footprint.json]

`--repo DIR` measures another checkout (e.g. a `git worktree` of an older commit) with its own
engine directory built by that checkout, so "before" and "after" are measured the same way in one
run; repeat `--repo`/`--label` pairs, the current checkout is always measured as `after`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "exporter", "models", "plugins", "tokenizers", "PIL")


def _env(repo: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(repo), PYTHONDONTWRITEBYTECODE="1")


def build_engine(repo: Path, out: Path) -> Path:
    if not (out / "config.json").exists():
        cmd = [sys.executable, "-m", "exporter", "build", "--model", "tiny-llava", "--keep", "64", "--backend", "onnx",
               "--precision", "fp32", "--out", str(out)]
        subprocess.run(cmd, cwd=repo, env=_env(repo), check=True, capture_output=True, text=True)
    return out


def write_image(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    path = folder / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).resize((336, 336), Image.NEAREST).save(path)
    return path


def import_seconds(stderr: str) -> float:
    """Sum of the cumulative times of the top-level imports in `-X importtime` output (lines
    `import time: self | cumulative | name`, nested imports indented under their importer)."""
    total = 0
    for line in stderr.splitlines():
        fields = line.split("|")
        if not line.startswith("import time:") or len(fields) != 3 or "cumulative" in fields[1]:
            continue
        if not fields[2].startswith("  "):  # depth 0: one space after the bar
            total += int(fields[1])
    return total / 1e6


_PROBE = ("import json, resource, sys; from runtime.cli import main; code = main(sys.argv[1:]); "
          "print(json.dumps({'modules': sorted({m.split('.')[0] for m in sys.modules}), "
          "'peak_rss_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})); sys.exit(code)")


def run_once(repo: Path, engine: Path, image: Path) -> dict:
    cmd = [sys.executable, "-X", "importtime", "-c", _PROBE,
           "generate", "--engine-dir", str(engine), "--image", str(image), "--prompt", "what is in the picture?",
           "--max-new-tokens", "8", "--backend", "onnxruntime", "--json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=_env(repo), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"
        raise SystemExit(f"error: generate failed in {repo}: {last}")
    lines = proc.stdout.strip().splitlines()
    result, probe = json.loads(lines[0]), json.loads(lines[-1])
    timings = result["timings"]
    return {"import_s": import_seconds(proc.stderr), "ttft_s": timings["vision_s"] + timings["prefill_s"],
            "wall_s": wall, "peak_rss_mib": probe["peak_rss_kib"] / 1024,
            "heavy_modules": [m for m in probe["modules"] if m in HEAVY]}


def measure(repo: Path, label: str, runs: int, work: Path, image: Path) -> dict:
    engine = build_engine(repo, work / f"engine-{label}")
    rows = [run_once(repo, engine, image) for _ in range(runs)]
    size = sum(p.stat().st_size for p in engine.rglob("*") if p.is_file())

    def med(key):
        return statistics.median(r[key] for r in rows)

    return {"label": label, "repo": str(repo), "engine_mib": round(size / 2**20, 1), "runs": runs,
            "import_s": med("import_s"), "ttft_s": med("ttft_s"), "wall_s": med("wall_s"),
            "peak_rss_mib": med("peak_rss_mib"), "heavy_modules": rows[-1]["heavy_modules"], "per_run": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repo", type=Path, action="append", default=[], help="another checkout to measure first")
    ap.add_argument("--label", action="append", default=[], help="label of each --repo (default: before)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    labels = args.label + ["before"] * (len(args.repo) - len(args.label))
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = write_image(work)
        for repo, label in zip(args.repo, labels):
            results.append(measure(repo.resolve(), label, args.runs, work, image))
        results.append(measure(ROOT, "after", args.runs, work, image))
    payload = {
        "command": " ".join(["python", "scripts/measure_runtime_footprint.py", *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "python": sys.version.split()[0],
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "results": results,
    }
    for r in results:
        print(f"{r['label']:<8} import {r['import_s']:.2f} s  TTFT {r['ttft_s'] * 1e3:.0f} ms  wall {r['wall_s']:.2f} s  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB  heavy: {', '.join(r['heavy_modules'])}")
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
