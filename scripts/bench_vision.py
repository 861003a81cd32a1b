"""Vision-graph latency on ONNX Runtime: `none` vs every method at K = 64, 128, 192, and the
cost of the selection subgraph alone (scores -> indices) as a share of the whole graph.

Usage: python scripts/bench_vision.py [--model llava-1.5-7b] [--runs 5] [--provider cpu|cuda]
         [--precision fp32|fp16] [--out benchmarks/results/vision_<provider>.json]
Builds the shape-exact random-weight model from MODELS.md (no download).
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporter.build import versions  # noqa: E402
from exporter.onnx_export import ONNX_IR_VERSION, ONNX_OPSET, export_vision_onnx  # noqa: E402
from exporter.pruning import make_config, vectorized  # noqa: E402
from models import load_model  # noqa: E402
from models.text_tower import load_visual_projection  # noqa: E402

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def time_session(session, feeds, runs: int) -> list[float]:
    session.run(None, feeds)  # warm-up
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        out.append((time.perf_counter() - start) * 1e3)
    return out


class SelectionOnly(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, rows, similarity=None):
        return vectorized.select(self.cfg, rows, similarity)


def export_selection(cfg, path: Path) -> dict:
    import onnx

    rows = torch.rand(1, len(cfg.layers), cfg.num_patches)
    args, names = (rows,), ["layer_rows"]
    if cfg.uses_prompt:
        args, names = (rows, torch.rand(1, cfg.num_patches)), ["layer_rows", "similarity"]
    torch.onnx.export(SelectionOnly(cfg), args, str(path), input_names=names, output_names=["kept"],
                      opset_version=ONNX_OPSET, dynamo=False)
    model = onnx.load(str(path))
    model.ir_version = ONNX_IR_VERSION
    onnx.save(model, str(path))
    return {n: a.numpy() for n, a in zip(names, args)}


def main() -> int:
    import warnings

    import onnxruntime as ort

    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llava-1.5-7b")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--selection-runs", type=int, default=200)
    ap.add_argument("--provider", default="cpu", choices=PROVIDERS)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    ap.add_argument("--keeps", default="64,128,192")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"vision_{args.provider}_{args.precision}.json"

    loaded = load_model(args.model, random_weights=True)
    projection = load_visual_projection(loaded)
    parts = loaded.vision
    dtype = np.float16 if args.precision == "fp16" else np.float32
    pixels = np.random.default_rng(0).standard_normal((1, 3, parts.image_size, parts.image_size)).astype(dtype)
    text = np.random.default_rng(1).standard_normal((1, projection.out_features)).astype(np.float32)
    keeps = [int(k) for k in args.keeps.split(",")]
    configs = [make_config("none", None)] + [
        make_config(m, k) for m in ("hivtp", "hiprune", "hiprune++") for k in keeps
    ]
    options = ort.SessionOptions()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in tqdm(configs, desc="vision graphs"):
            path = Path(tmp) / "vision.onnx"
            export_vision_onnx(parts, cfg, path, precision=args.precision, clip_projection=projection)
            session = ort.InferenceSession(str(path), options, providers=PROVIDERS[args.provider])
            feeds = {"pixel_values": pixels}
            if cfg.uses_prompt:
                feeds["text_embeds"] = text
            whole = time_session(session, feeds, args.runs)
            del session
            row = {
                "method": cfg.method, "keep": cfg.output_count,
                "vision_ms_median": statistics.median(whole),
                "vision_ms_min": min(whole), "vision_ms_max": max(whole), "runs": args.runs,
            }
            if cfg.method != "none":
                sel_path = Path(tmp) / "selection.onnx"
                sel_feeds = export_selection(cfg, sel_path)
                sel = ort.InferenceSession(str(sel_path), options, providers=PROVIDERS[args.provider])
                sel_ms = time_session(sel, sel_feeds, args.selection_runs)
                row["selection_ms_median"] = statistics.median(sel_ms)
                row["selection_share_percent"] = 100 * row["selection_ms_median"] / row["vision_ms_median"]
            rows.append(row)
            tqdm.write(json.dumps(row))

    base = rows[0]["vision_ms_median"]
    for row in rows:
        row["ratio_vs_none"] = row["vision_ms_median"] / base
    result = {
        "benchmark": "vision graph latency (batch 1) and selection-subgraph share",
        "model": f"{args.model} shape-exact, random weights (vision tower + projector)",
        "provider": PROVIDERS[args.provider][0],
        "precision": args.precision,
        "machine": machine(),
        "versions": versions(),
        "command": shlex.join(["python", "scripts/bench_vision.py", *sys.argv[1:]]),
        "target": "selection < 1 % of the vision graph",
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"wrote {out}")
    return 0


def markdown(result: dict) -> str:
    lines = [
        "| method | K | vision graph (ms, median) | vs none | selection alone (ms) | selection share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        sel = f"{r['selection_ms_median']:.3f}" if "selection_ms_median" in r else "-"
        share = f"{r['selection_share_percent']:.3f} %" if "selection_share_percent" in r else "-"
        lines.append(f"| {r['method']} | {r['keep']} | {r['vision_ms_median']:.0f} | {r['ratio_vs_none']:.3f} | {sel} | {share} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
