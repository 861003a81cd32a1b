"""Vision-graph latency on ONNX Runtime: `none` vs every method at K = 64, 128, 192, and the
cost of the selection subgraph alone as a share of the whole graph: scores -> indices for HIVTP
and HiPrune; for SCOPE the CLS row + patch features -> indices (the Gram matrix and the K-step
greedy Loop; the Gram matrix alone is timed too, so the loop's cost is the difference); for
VisionZip the CLS row + hidden states + keys -> merged tokens.

Usage: python scripts/bench_vision.py [--model llava-1.5-7b] [--rounds 5] [--runs 1] [--provider cpu|cuda]
         [--precision fp32|fp16] [--threads N] [--methods hivtp,hiprune,hiprune++,scope,visionzip]
         [--out benchmarks/results/vision_<provider>_<precision>.json]
Builds the shape-exact random-weight model from MODELS.md (no download). Every graph is exported
once; then each round opens, warms up and times every graph in turn (one session alive at a time:
ten 7B vision sessions would not fit in memory), under the load guard (scripts/load_guard.py): a
run during which other processes loaded the machine is refused (exit code 3) unless --allow-noisy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import load_guard  # noqa: E402
from exporter.onnx_export import ONNX_IR_VERSION, ONNX_OPSET, export_vision_onnx  # noqa: E402
from exporter.pruning import make_config, vectorized  # noqa: E402

METHODS = ("hivtp", "hiprune", "hiprune++", "scope", "visionzip")
from models import load_model  # noqa: E402
from models.text_tower import load_visual_projection  # noqa: E402

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def time_session(session, feeds, runs: int) -> list[float]:
    """One warm-up run, then `runs` timed runs (ms)."""
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


def main(argv=None) -> int:
    import warnings

    import onnxruntime as ort

    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llava-1.5-7b")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds over all graphs")
    ap.add_argument("--runs", type=int, default=1, help="timed runs of each graph per round (after one warm-up)")
    ap.add_argument("--selection-runs", type=int, default=200)
    ap.add_argument("--provider", default="cpu", choices=PROVIDERS)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (default: ONNX Runtime's)")
    ap.add_argument("--keeps", default="64,128,192")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, default {','.join(METHODS)}")
    ap.add_argument("--out", type=Path)
    load_guard.add_arguments(ap)
    args = ap.parse_args(argv)
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
    if args.threads:
        options.intra_op_num_threads = args.threads
    guard = load_guard.from_args(args)
    whole: list[list[float]] = [[] for _ in configs]
    selection: list[list[float]] = [[] for _ in configs]
    gram: list[list[float]] = [[] for _ in configs]  # SCOPE: the Gram matrix alone (the rest is the loop)
    with tempfile.TemporaryDirectory() as tmp:
        graphs, sel_graphs = [], []
        for i, cfg in enumerate(tqdm(configs, desc="exporting vision graphs")):
            path = Path(tmp) / f"vision_{i}.onnx"
            export_vision_onnx(parts, cfg, path, precision=args.precision, clip_projection=projection)
            feeds = {"pixel_values": pixels, **({"text_embeds": text} if cfg.uses_prompt else {})}
            graphs.append((path, feeds))
            sel = []
            if cfg.method != "none":
                module, inputs = selection_inputs(cfg, width, heads)
                sel_path = Path(tmp) / f"selection_{i}.onnx"
                sel.append((sel_path, export_selection(module, inputs, sel_path)))
                if cfg.method == "scope":
                    gram_path = Path(tmp) / f"gram_{i}.onnx"
                    sel.append((gram_path, export_selection(ScopeSelection(cfg, gram_only=True), inputs, gram_path)))
            sel_graphs.append(sel)
        for r in tqdm(range(args.rounds), desc="rounds"):
            with guard.round(label=f"round {r}"):
                for i, ((path, feeds), sel) in enumerate(zip(graphs, sel_graphs)):
                    session = ort.InferenceSession(str(path), options, providers=PROVIDERS[args.provider])
                    whole[i] += time_session(session, feeds, args.runs)
                    del session
                    for (sel_path, sel_feeds), times in zip(sel, (selection[i], gram[i])):
                        times.append(time_graph(sel_feeds, sel_path, options, args))

    rows = []
    for cfg, times, sel_ms, gram_ms in zip(configs, whole, selection, gram):
        row = {
            "method": cfg.method, "keep": cfg.output_count,
            "vision_ms_median": statistics.median(times),
            "vision_ms_min": min(times), "vision_ms_max": max(times), "runs": len(times),
        }
        if sel_ms:
            row["selection_ms_median"] = statistics.median(sel_ms)
            row["selection_share_percent"] = 100 * row["selection_ms_median"] / row["vision_ms_median"]
        if gram_ms:
            row["gram_ms_median"] = statistics.median(gram_ms)
            row["loop_ms_median"] = row["selection_ms_median"] - row["gram_ms_median"]
        rows.append(row)
    base = rows[0]["vision_ms_median"]
    for row, times in zip(rows, whole):
        row["ratio_vs_none"] = row["vision_ms_median"] / base
        # paired within each round (the same position in every list is the same round)
        paired = [t / b for t, b in zip(times, whole[0])]
        row["ratio_vs_none_paired"] = {"median": statistics.median(paired), "min": min(paired), "max": max(paired)}
    result = {
        "benchmark": "vision graph latency (batch 1) and selection-subgraph share",
        "model": f"{args.model} shape-exact, random weights (vision tower + projector)",
        "provider": PROVIDERS[args.provider][0],
        "precision": args.precision,
        "threads": args.threads or None,
        "rounds": args.rounds,
        "target": "selection < 1 % of the vision graph",
        "results": rows,
    }
    guard.stamp(result, "scripts/bench_vision.py", argv)
    print(markdown(result))
    busy = guard.refusal()
    if busy:
        print(f"error: {busy}", file=sys.stderr)
        return 3
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
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
