"""SCOPE's K greedy steps as one ONNX Loop (what the exporter emits) against K unrolled copies:
export time, ONNX size and node count, TensorRT-RTX ahead-of-time build time and plan size, and
ONNX Runtime CPU latency, at K = 64, 128, 192.

    python scripts/bench_scope_loop.py [--graph selection|vision] [--model llava-1.5-7b]
        [--keeps 64,128,192] [--precision fp16|fp32] [--out benchmarks/results/scope_loop.json]

`selection` (default): the selection subgraph alone (CLS row + patch features -> indices) at
the model's shapes (7B: N = 576, D = 1024), which is all the two forms differ in; `vision`: the
whole vision graph of the model (random weights unless it is tiny-llava). TensorRT-RTX builds
ahead of time without a GPU; without it the build columns stay empty.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_vision import ScopeSelection, export_selection, time_session  # noqa: E402
from load_guard import machine  # noqa: E402
from exporter.build import versions  # noqa: E402
from exporter.pruning import make_config  # noqa: E402


def _node_count(path: Path) -> dict:
    import onnx

    graph = onnx.load(str(path)).graph
    loops = [n for n in graph.node if n.op_type == "Loop"]
    return {"nodes": len(graph.node), "loop_body_nodes": sum(len(n.attribute[0].g.node) for n in loops)}


def _vision_graph(model: str, cfg, path: Path, precision: str, unrolled: bool) -> tuple[dict, dict]:
    from exporter import vision_graph
    from exporter.onnx_export import export_vision_onnx
    from exporter.pruning import vectorized
    from models import load_model

    loaded = load_model(model, random_weights=model not in ("tiny-llava", "tiny-llava-next"))
    # the graph calls vectorized.scope_steps; for this comparison only, make it unroll
    steps = vectorized.scope_steps
    vision_graph.vectorized.scope_steps = lambda *a, **k: steps(*a, **k, unrolled=unrolled)
    try:
        export_vision_onnx(loaded.vision, cfg, path, precision=precision)
    finally:
        vision_graph.vectorized.scope_steps = steps
    size = loaded.vision.image_size
    dtype = np.float16 if precision == "fp16" else np.float32
    feeds = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(dtype)}
    return feeds, {"pixel_values": ((1, 3, size, size),) * 3}


def _selection_graph(model: str, cfg, path: Path, unrolled: bool) -> tuple[dict, dict]:
    from models.specs import SPECS, llava_config

    vision = llava_config(SPECS[model]).vision_config if model in SPECS else None
    width = vision.hidden_size if vision is not None else 1024
    gen = torch.Generator().manual_seed(0)
    n = cfg.num_patches
    feeds = {"cls_scores": torch.softmax(torch.randn(1, n + 1, generator=gen), -1),
             "features": torch.randn(1, n, width, generator=gen)}
    arrays = export_selection(ScopeSelection(cfg, unrolled=unrolled), feeds, path)
    return arrays, {name: (tuple(a.shape),) * 3 for name, a in arrays.items()}


def main(argv=None) -> int:
    import onnxruntime as ort

    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", choices=("selection", "vision"), default="selection")
    ap.add_argument("--model", default="llava-1.5-7b")
    ap.add_argument("--keeps", default="64,128,192")
    ap.add_argument("--precision", choices=("fp16", "fp32"), default="fp16", help="vision graph only")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scope_loop.json")
    args = ap.parse_args(argv)
    try:
        from exporter.trt_compat import build_engine, load_backend

        backend = load_backend("tensorrt-rtx")
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        backend, build_engine = None, None
        print(f"no TensorRT-RTX ({exc}); build columns stay empty", file=sys.stderr)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for keep in [int(k) for k in args.keeps.split(",")]:
            for form in ("loop", "unrolled"):
                cfg = make_config("scope", keep)
                path = Path(tmp) / f"{form}-{keep}.onnx"
                start = time.perf_counter()
                if args.graph == "vision":
                    feeds, shapes = _vision_graph(args.model, cfg, path, args.precision, form == "unrolled")
                else:
                    feeds, shapes = _selection_graph(args.model, cfg, path, form == "unrolled")
                row = {"keep": keep, "form": form, "export_s": round(time.perf_counter() - start, 2),
                       "onnx_bytes": sum(p.stat().st_size for p in Path(tmp).glob(path.name + "*")),
                       **_node_count(path)}
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                row["ort_cpu_ms_median"] = statistics.median(time_session(session, feeds, args.runs))
                del session
                if backend is not None:
                    start = time.perf_counter()
                    build_engine(backend, path, Path(tmp) / "plan", profiles=[shapes], label=f"{form} K={keep}")
                    row["rtx_build_s"] = round(time.perf_counter() - start, 2)
                    row["plan_bytes"] = (Path(tmp) / "plan").stat().st_size
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {
        "benchmark": "SCOPE greedy steps: ONNX Loop vs unrolled",
        "graph": args.graph, "model": args.model, "precision": args.precision if args.graph == "vision" else "fp32",
        "machine": machine(), "load_average": os.getloadavg(), "versions": versions(backend),
        "command": shlex.join(["python", "scripts/bench_scope_loop.py", *(argv if argv is not None else sys.argv[1:])]),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
