"""ONNX Runtime's profiler, read back per run and grouped: shared by profile_decoder.py and
profile_vision.py.

`profiled_runs` runs each (label, feeds) case 1 + reps times in one profiling session (the first
run of each is a warm-up) and returns every timed run's node events; `summarize` groups them
with a caller's `categorize(event) -> str` into time per run, share of node time and, for GEMMs,
the FLOP rate achieved. Shares stay meaningful on a busy machine; absolute times do not.
"""
from __future__ import annotations

import collections
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

GEMM_OPS = ("MatMul", "FusedMatMul", "Gemm", "Conv")


def shape(entry: dict) -> list[int]:
    return next(iter(entry.values())) if entry else []


def output_shape(args: dict) -> list[int]:
    return shape(args["output_type_shape"][0]) if args.get("output_type_shape") else []


def is_weight_gemm(args: dict) -> bool:
    """ONNX Runtime pre-packs constant weights, and the profile then lists only the activation."""
    shapes = args.get("input_type_shape", [])
    return len(shapes) == 1 or (len(shapes) > 1 and len(shape(shapes[1])) == 2)


def gemm_flops(args: dict) -> float:
    """2 * batch * M * K * N of a MatMul from the profiled shapes (a transposed B, as FusedMatMul
    may take it, is recognised by its shared K dimension); 0 for anything else."""
    if args.get("op_name") not in ("MatMul", "FusedMatMul", "Gemm"):
        return 0.0
    shapes = [shape(s) for s in args.get("input_type_shape", [])]
    out = output_shape(args)
    if not shapes or len(shapes[0]) < 2 or not out:
        return 0.0
    a = shapes[0]
    if is_weight_gemm(args):
        return 2.0 * int(np.prod(a[:-1])) * a[-1] * out[-1]
    b = shapes[1]
    if len(b) < 2:
        return 0.0
    k = a[-1]
    n = b[-1] if b[-2] == k else b[-2]
    return 2.0 * max(int(np.prod(a[:-2])), int(np.prod(b[:-2]))) * a[-2] * k * n


def profiled_runs(model: Path, cases: list[tuple[str, dict]], threads: int, reps: int,
                  options: Callable | None = None, run: Callable | None = None) -> dict:
    """{"setup_s": session creation seconds, label: [(run wall us, [node events]) per timed run]}.
    `run(session, feeds)` drives one run (default `session.run(None, feeds)`), e.g. with I/O
    binding."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    if options is not None:
        options(opts)
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        started = time.perf_counter()
        session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        setup_s = time.perf_counter() - started
        labels = []
        for label, feeds in cases:
            for _ in range(1 + reps):
                if run is None:
                    session.run(None, feeds)
                else:
                    run(session, feeds)
                labels.append(label)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    nodes = sorted((e for e in events if e.get("cat") == "Node"), key=lambda e: e["ts"])
    out: dict = {"setup_s": setup_s}
    for label, _ in cases:
        windows = [r for r, lab in zip(runs, labels) if lab == label][1:]
        out[label] = [(w["dur"], [e for e in nodes if w["ts"] <= e["ts"] <= w["ts"] + w["dur"]]) for w in windows]
    return out


def summarize(runs: list[tuple[float, list[dict]]], categorize: Callable[[dict], str]) -> dict:
    groups: dict[str, dict] = collections.defaultdict(lambda: {"us": 0.0, "nodes": 0, "gflop": 0.0})
    ops: collections.Counter = collections.Counter()
    wall = 0.0
    for run_us, events in runs:
        wall += run_us
        for e in events:
            g = groups[categorize(e)]
            g["us"] += e["dur"]
            g["nodes"] += 1
            g["gflop"] += gemm_flops(e["args"]) / 1e9
            ops[e["args"]["op_name"]] += e["dur"]
    n = max(1, len(runs))
    total = sum(g["us"] for g in groups.values()) or 1.0
    rows = []
    for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["us"]):
        row = {"group": name, "ms_per_run": g["us"] / n / 1e3, "share": g["us"] / total, "nodes_per_run": g["nodes"] // n}
        if g["gflop"]:
            row["gflop_per_run"] = g["gflop"] / n
            row["gflop_per_s"] = g["gflop"] / (g["us"] / 1e6) if g["us"] else None
        rows.append(row)
    return {"run_ms": wall / n / 1e3, "nodes_ms": total / n / 1e3, "outside_nodes_share": 1 - total / max(wall, 1e-9),
            "groups": rows, "top_ops": [{"op": op, "share": us / total} for op, us in ops.most_common(8)]}


def print_summary(label: str, prof: dict) -> None:
    print(f"\n{label}: {prof['run_ms']:.1f} ms per run (outside nodes {prof['outside_nodes_share']:.1%})")
    for g in prof["groups"]:
        rate = f"  {g['gflop_per_s']:.0f} GFLOP/s" if g.get("gflop_per_s") else ""
        print(f"  {g['share']:>6.1%}  {g['ms_per_run']:>9.2f} ms  {g['group']}{rate}")
