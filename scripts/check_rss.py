#!/usr/bin/env python3
"""RSS of one process over many sequential generations on the built-in tiny engine: it must stay
flat (no per-request leak in the runtime's preprocessing, ONNX Runtime sessions or caches).

    python scripts/check_rss.py [--generations 1000] [--json benchmarks/results/rss_1000_generations.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    """Current resident set size (not the peak) from /proc."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=1000)
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import numpy as np
    from PIL import Image

    from runtime import Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        engine = Path(tmp) / "engine"
        from exporter.cli import main as export

        if export(["build", "--model", "tiny-llava", "--keep", "64", "--backend", "onnx", "--precision", "fp32",
                   "--max-input-len", "700", "--max-output-len", "40", "--out", str(engine)]) != 0:
            return 2
        pipe = Pipeline.from_dir(engine, backend="onnxruntime")
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 255, (300 + 7 * i, 400, 3), dtype=np.uint8)) for i in range(8)]
        samples, start = [], time.perf_counter()
        for n in range(args.generations):
            pipe.generate(images[n % len(images)], f"what is in picture {n}?", max_new_tokens=args.new_tokens)
            if n in (0, 9) or (n + 1) % 100 == 0:
                samples.append({"generation": n + 1, "rss_mib": round(rss_mib(), 1)})
        elapsed = time.perf_counter() - start
    warm = samples[1]["rss_mib"]  # after 10 generations: sessions and arenas are warm
    end = samples[-1]["rss_mib"]
    result = {"command": " ".join(["python", "scripts/check_rss.py", *(argv or sys.argv[1:])]),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "generations": args.generations,
              "seconds": round(elapsed, 1), "rss_after_10_mib": warm, "rss_end_mib": end,
              "growth_mib": round(end - warm, 1), "samples": samples, "load_average": os.getloadavg()}
    print(f"RSS after 10 generations {warm} MiB, after {args.generations} {end} MiB "
          f"(growth {end - warm:+.1f} MiB, {elapsed:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
