#!/usr/bin/env python
"""Decoder export of a shape-exact random-weight model for --quantize none / int8 / int4:
decoder.onnx.data bytes, wall time and peak RSS of each export.

Each export runs in its own child process (peak RSS is a per-process high-water mark) and only
the decoder is exported (no vision tower), with `exporter.decoder_export.export_decoder`, the
function `python -m exporter build` calls. Random weights are drawn layer by layer while they
stream out (models.random_language.LazyRandomLanguage). Wall time is only meaningful on an idle
machine: the load average before and after each run is recorded next to it.

    python scripts/bench_quant_export.py                       # llava-1.5-7b, ~15 GB of disk at peak
    python scripts/bench_quant_export.py --model tiny-llava    # dry run in seconds
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from types import SimpleNamespace
model, scheme, group, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
from models.specs import SPECS, llava_config
from exporter.decoder_export import export_decoder
from exporter.quantize import QuantSpec
if model in SPECS:
    loaded = SimpleNamespace(model=None, config=llava_config(SPECS[model]))  # random weights, decoder only
else:
    from models import load_model
    loaded = load_model(model)
t0 = time.perf_counter()
section = export_decoder(loaded, work, precision="fp16", max_batch=1, max_input_len=1024, max_output_len=256,
                         visual_tokens=576, progress=False, quant=QuantSpec(scheme, group))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "opset": section.onnx_opset, "kv_cache": section.kv_cache}))
"""


def run_one(model: str, scheme: str, group: int, keep: bool, work_root: Path | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"quant-{scheme}-", dir=work_root))
    try:
        load_before = os.getloadavg()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        res = subprocess.run([sys.executable, "-c", CHILD, model, scheme, str(group), str(work)],
                             capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"error: export {scheme} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
        out = json.loads(res.stdout.strip().splitlines()[-1])
        data = work / "decoder.onnx.data"
        return {"scheme": scheme, "group_size": group if scheme == "int4" else None,
                "decoder_bytes": data.stat().st_size, "decoder_gb": round(data.stat().st_size / 1e9, 3),
                "onnx_proto_bytes": (work / "decoder.onnx").stat().st_size,
                "seconds": round(out["seconds"], 1), "peak_rss_gib": round(out["peak_rss_kib"] / 2 ** 20, 2),
                "onnx_opset": out["opset"], "kv_cache": out["kv_cache"],
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llava-1.5-7b", help="a models.specs name (random weights) or tiny-llava")
    p.add_argument("--schemes", nargs="+", default=["none", "int8", "int4"])
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--work", type=Path, help="where the exports are written (default: the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the exported files")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quant_export_7b.json")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from load_guard import machine

    from exporter.build import versions

    rows = []
    for scheme in args.schemes:
        row = run_one(args.model, scheme, args.group_size, args.keep, args.work)
        print(f"{scheme:<5} {row['decoder_gb']:>7.3f} GB  {row['seconds']:>7.1f} s  peak RSS {row['peak_rss_gib']:>6.2f} GiB  "
              f"load {row['loadavg_before'][0]:.2f} -> {row['loadavg_after'][0]:.2f}", flush=True)
        rows.append(row)
    report = {"machine": machine(), "versions": versions(), "model": args.model, "random_weights": True,
              "precision": "fp16", "max_input_len": 1024, "max_output_len": 256,
              "command": "python scripts/bench_quant_export.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "note": "decoder only, one child process per scheme; wall time is valid only on an idle machine "
                      "(see loadavg); bytes and peak RSS are valid under load",
              "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
