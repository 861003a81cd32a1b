"""Vision-graph latency on ONNX Runtime: `none` vs every method at K = 64, 128, 192, and the
cost of the selection subgraph alone as a share of the whole graph: scores -> indices for HIVTP
and HiPrune; for SCOPE the CLS row + patch features -> indices (the Gram matrix and the K-step
greedy Loop; the Gram matrix alone is timed too, so the loop's cost is the difference); for
VisionZip the CLS row + hidden states + keys -> merged tokens.

Usage: python scripts/bench_vision.py [--model llava-1.5-7b] [--runs 5] [--provider cpu|cuda]
         [--precision fp32|fp16] [--methods hivtp,hiprune,hiprune++,scope,visionzip]
         [--out benchmarks/results/vision_<provider>.json]
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

METHODS = ("hivtp", "hiprune", "hiprune++", "scope", "visionzip")
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


class ScopeSelection(torch.nn.Module):
    """CLS row + patch features -> kept indices; `gram_only` stops after the Gram matrix."""

    def __init__(self, cfg, gram_only: bool = False, unrolled: bool = False):
        super().__init__()
        self.cfg, self.gram_only, self.unrolled = cfg, gram_only, unrolled

    def forward(self, cls_scores, features):
        if self.gram_only:
            return vectorized.cosine_matrix(features)
        return vectorized.scope(self.cfg, cls_scores[:, 1:], features, unrolled=self.unrolled)


class VisionZipSelection(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, cls_scores, hidden, keys):
        tokens, kept, _ = vectorized.visionzip(self.cfg, cls_scores[:, 1:], hidden, keys)
        return tokens, kept


def selection_inputs(cfg, width: int, heads: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The selection subgraph of `cfg` and random inputs of the vision tower's shapes."""
    n = cfg.num_patches
    gen = torch.Generator().manual_seed(0)
    if cfg.method == "scope":
        cls = torch.softmax(torch.randn(1, n + 1, generator=gen), -1)
        return ScopeSelection(cfg), {"cls_scores": cls, "features": torch.randn(1, n, width, generator=gen)}
    if cfg.method == "visionzip":
        cls = torch.softmax(torch.randn(1, n + 1, generator=gen), -1)
        return VisionZipSelection(cfg), {"cls_scores": cls, "hidden": torch.randn(1, n + 1, width, generator=gen),
                                         "keys": torch.randn(1, n + 1, width // heads, generator=gen)}
    feeds = {"layer_rows": torch.rand(1, len(cfg.layers), n, generator=gen)}
    if cfg.uses_prompt:
        feeds["similarity"] = torch.rand(1, n, generator=gen)
    return SelectionOnly(cfg), feeds


def export_selection(module: torch.nn.Module, feeds: dict[str, torch.Tensor], path: Path) -> dict:
    import onnx

    torch.onnx.export(module, tuple(feeds.values()), str(path), input_names=list(feeds),
                      opset_version=ONNX_OPSET, dynamo=False)
    model = onnx.load(str(path))
    model.ir_version = ONNX_IR_VERSION
    onnx.save(model, str(path))
    return {name: value.numpy() for name, value in feeds.items()}


def time_graph(feeds: dict, path: Path, options, args) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), options, providers=PROVIDERS[args.provider])
    wanted = {i.name for i in session.get_inputs()}  # an unused input is dropped by the export
    feeds = {name: value for name, value in feeds.items() if name in wanted}
    return statistics.median(time_session(session, feeds, args.selection_runs))


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
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, default {','.join(METHODS)}")
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
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"--methods: unknown {', '.join(sorted(unknown))} (known: {', '.join(METHODS)})")
    configs = [make_config("none", None)] + [make_config(m, k) for m in methods for k in keeps]
    width, heads = parts.config.vision_config.hidden_size, parts.config.vision_config.num_attention_heads
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
                module, feeds = selection_inputs(cfg, width, heads)
                row["selection_ms_median"] = time_graph(export_selection(module, feeds, sel_path), sel_path,
                                                        options, args)
                row["selection_share_percent"] = 100 * row["selection_ms_median"] / row["vision_ms_median"]
                if cfg.method == "scope":  # the Gram matrix alone: the rest is the greedy loop
                    gram = export_selection(ScopeSelection(cfg, gram_only=True), feeds, sel_path)
                    row["gram_ms_median"] = time_graph(gram, sel_path, options, args)
                    row["loop_ms_median"] = row["selection_ms_median"] - row["gram_ms_median"]
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
        "selection_inputs": {
            "hivtp/hiprune": "layer score rows -> kept indices",
            "hiprune++": "layer score rows + prompt similarity -> kept indices",
            "scope": "CLS row + patch features -> kept indices (Gram matrix + K-step greedy Loop + top-K); "
                     "gram_ms_median: the Gram matrix alone, loop_ms_median = the difference",
            "visionzip": "CLS row + hidden states + head-mean keys -> merged tokens and their indices",
        },
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"wrote {out}")
    return 0


def markdown(result: dict) -> str:
    lines = [
        "| method | K | vision graph (ms, median) | vs none | selection alone (ms) | selection share | of it SCOPE's loop (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        sel = f"{r['selection_ms_median']:.3f}" if "selection_ms_median" in r else "-"
        share = f"{r['selection_share_percent']:.3f} %" if "selection_share_percent" in r else "-"
        loop = f"{r['loop_ms_median']:.3f}" if "loop_ms_median" in r else "-"
        lines.append(f"| {r['method']} | {r['keep']} | {r['vision_ms_median']:.0f} | {r['ratio_vs_none']:.3f} | {sel} | "
                     f"{share} | {loop} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
