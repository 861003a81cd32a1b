#!/usr/bin/env python
"""Is a pruned vision graph slower than `none` for any reason other than the machine's load?
ONNX Runtime's profiler on the exported graphs, grouped by what each node does.

    python scripts/profile_vision.py [--model llava-1.5-7b] [--graphs none hivtp:64 hiprune:64 hivtp:64:reducemean]
        [--threads 2] [--reps 2] [--out benchmarks/results/vision_profile_cpu.json]

Node names carry the module path the exporter traced (`/clip/encoder/layers.6/...`,
`/projector/...`, top-level ops for attention and selection), so each node's time lands in one
group: CLIP's weight GEMMs, attention GEMMs and softmax (explicit in every layer: the fused SDPA
of the unscored layers is decomposed into the same MatMul/Softmax ops at opset 17), the scored
layers' extra work (score scaling and the mean over heads and queries), the selection, and the
projector on the kept rows. The report gives every group per graph and each method's difference
to `none`: the method pays its scores and selection and saves projector rows.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import load_guard  # noqa: E402
from ort_profile import is_weight_gemm, output_shape, print_summary, profiled_runs, summarize  # noqa: E402

SELECTION_OPS = {"TopK", "Less", "Greater", "GreaterOrEqual", "LessOrEqual", "Equal", "And", "Or", "Not", "Range",
                 "Where", "GatherElements", "ReduceSum", "ReduceMax", "Sub", "ConstantOfShape", "Expand"}


def category(event: dict) -> str:
    """By op and shape (the traced names of CLIP's submodules are relative, `/q_proj/MatMul`)."""
    args, name = event["args"], event["name"]
    op, out = args["op_name"], output_shape(args)
    if "/projector/" in name:
        return "projector (on the kept rows)"
    if op in ("MatMul", "FusedMatMul", "Gemm", "Conv"):
        if op == "Conv" or is_weight_gemm(args):
            return "CLIP weight GEMMs (q/k/v/out, MLP, patch conv)"
        return "attention GEMMs (QK^T, PV)"
    if op == "Softmax":
        return "attention softmax"
    if op == "ReduceMean" and len(out) == 2:
        return "layer scores (mean over heads and queries)"
    if op == "LayerNormalization":
        return "LayerNorm"
    if op in ("Mul", "Div", "Sqrt", "Add") and len(out) == 4:
        return "attention scaling (q, k or scores)"
    if op in ("Add", "Mul", "QuickGelu", "Sigmoid", "Erf", "Div") and len(out) == 3:
        return "CLIP elementwise (bias, QuickGELU, residual)"
    if op in SELECTION_OPS:
        return "selection + gather of the kept rows"
    return "layout and shape ops"


@contextlib.contextmanager
def reducemean_score_reduction():
    """Comparison: the scored layers' mean over heads and query rows as one ReduceMean over axes
    (1, 2) of the probability map, the form the export used before it became a GEMV per head
    (PrunedVisionGraph._scored_attention). Only for measuring; the export itself is unchanged."""
    import torch

    from exporter import vision_graph

    original = vision_graph.PrunedVisionGraph._scored_attention

    def scored(self, attn, x, need_output):
        q, k, v = self._qkv(attn, x)
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() * attn.scale, dim=-1)
        score = probs.mean(dim=(1, 2))  # (B, 1+N)
        out = self._merge(attn, torch.matmul(probs.to(v.dtype), v)) if need_output else None
        return out, score

    vision_graph.PrunedVisionGraph._scored_attention = scored
    try:
        yield
    finally:
        vision_graph.PrunedVisionGraph._scored_attention = original


def main(argv=None) -> int:
    from exporter.onnx_export import export_vision_onnx
    from exporter.pruning import make_config
    from models import load_model
    from models.text_tower import load_visual_projection

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llava-1.5-7b")
    p.add_argument("--graphs", nargs="+", default=["none", "hivtp:64", "hiprune:64", "hivtp:64:reducemean"],
                   help="METHOD[:K[:reducemean]] (reducemean: the scores reduced by one ReduceMean, the earlier form)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vision_profile_cpu.json")
    args = p.parse_args(argv)
    from bench_ttft import register_scaled_spec

    register_scaled_spec()  # llava-1.5-7b-cpu / llava-next-7b-cpu work too
    loaded = load_model(args.model, random_weights=True)
    parts = loaded.vision
    pixels = np.random.default_rng(0).standard_normal((1, 3, parts.image_size, parts.image_size)).astype(np.float32)
    guard = load_guard.LoadGuard(allow_noisy=True)
    report = {"model": args.model, "threads": args.threads, "reps": args.reps, "graphs": {},
              "note": "shares and per-group differences; absolute times depend on the machine's load"}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.graphs:
            method, keep, variant = (spec.split(":") + ["", ""])[:3]
            cfg = make_config(method, int(keep) if keep else None, grid=parts.grid, num_layers=parts.num_layers)
            projection = load_visual_projection(loaded) if cfg.uses_prompt else None
            path = Path(tmp) / "vision.onnx"
            with reducemean_score_reduction() if variant == "reducemean" else contextlib.nullcontext():
                export_vision_onnx(parts, cfg, path, clip_projection=projection)
            feeds = {"pixel_values": pixels}
            if cfg.uses_prompt:
                feeds["text_embeds"] = np.ones((1, projection.out_features), np.float32)
            with guard.round(label=spec):
                runs = profiled_runs(path, [(spec, feeds)], args.threads, args.reps)
            report["graphs"][spec] = summarize(runs[spec], category)
            print_summary(spec, report["graphs"][spec])
    base = {g["group"]: g["ms_per_run"] for g in report["graphs"][args.graphs[0]]["groups"]}
    base_total = report["graphs"][args.graphs[0]]["nodes_ms"]
    report["difference_to_first"] = {}
    for spec in args.graphs[1:]:
        groups = {g["group"]: g["ms_per_run"] for g in report["graphs"][spec]["groups"]}
        diff = {k: groups.get(k, 0.0) - base.get(k, 0.0) for k in sorted(set(groups) | set(base))}
        report["difference_to_first"][spec] = diff
        print(f"\n{spec} minus {args.graphs[0]} (ms per run; node total {report['graphs'][spec]['nodes_ms']:.0f} vs "
              f"{base_total:.0f}):")
        for k, v in sorted(diff.items(), key=lambda kv: kv[1]):
            print(f"  {v:+9.2f}  {k}")
    guard.stamp(report, "scripts/profile_vision.py", argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}" + ("  [machine busy: compare shares and differences only]" if report["noisy"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
