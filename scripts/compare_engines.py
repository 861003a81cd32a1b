#!/usr/bin/env python3
"""Reproduce an engine directory's numbers with NVIDIA's own tools, and check its outputs.

    python scripts/compare_engines.py ENGINE_DIR [--batch 1] [--views N] [--run] [--json FILE]

Prints the exact `trtexec` command (engine, plugin library, shapes of every input; on
TensorRT 10.x `--useCudaGraph --noDataTransfers --useSpinWait`, which TensorRT 11 does by
default, so figures from both compare) and the `polygraphy run` commands that compare the
TensorRT engine with ONNX Runtime on the same inputs, the plugin library loaded. With --run
and the tools present, runs them and reports trtexec's performance summary and polygraphy's
verdict in the row format of `python -m runtime bench --json`. Without TensorRT, --run
compares the standard-op graph under ONNX Runtime with the PyTorch reference instead.

LLaVA-NeXT (anyres) engines take one row per view, V = batch * views, and a `view_budget`
(V,) int64 input that must hold a built K_view (an unknown budget selects no token at all,
which would time the same work but compare nothing). The commands feed `--views N` views per
image (default: the view count of the engine's first budget; `none`: the widest layout) and
that view count's K_view for every view: trtexec reads it from a raw int64 file written into
the work folder (`--loadInputs=view_budget:FILE`, trtexec's only way to set an input's
values), polygraphy generates it with `--val-range view_budget:[K,K]`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.contract import EngineConfig, Tensors, VisionSection, read_config, tensor  # noqa: E402

TRT10_COMPARABLE_FLAGS = ["--useCudaGraph", "--noDataTransfers", "--useSpinWait"]
# kept_indices must agree exactly; features get the fp16 engine's tolerance.
TOLERANCES = {Tensors.KEPT_INDICES: (0.0, 0.0), Tensors.VISUAL_FEATURES: (1e-2, 1e-2)}

# ---- trtexec's performance summary -------------------------------------------------------
_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([-+\d.eE]+)\s*ms")
_LINES = {
    "Latency": "latency_ms",
    "End-to-End Host Latency": "end_to_end_host_latency_ms",
    "Enqueue Time": "enqueue_time_ms",
    "H2D Latency": "h2d_latency_ms",
    "GPU Compute Time": "gpu_compute_time_ms",
    "D2H Latency": "d2h_latency_ms",
}


def parse_trtexec(text: str) -> dict[str, Any]:
    """trtexec's "=== Performance summary ===" block -> {throughput_qps, <line>_ms: {min, max,
    mean, median, p90, p95, p99, ...}, total_host_walltime_s, total_gpu_compute_time_s}.
    Lines carry a "[date-time] [I] " prefix in every TensorRT release; it is ignored."""
    start = text.find("=== Performance summary ===")
    if start < 0:
        raise ValueError("no '=== Performance summary ===' block in the trtexec output")
    out: dict[str, Any] = {}
    for raw in text[start:].splitlines()[1:]:
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", raw).strip()
        if line.startswith("==="):
            break
        if line.startswith("Throughput:"):
            out["throughput_qps"] = float(line.split(":", 1)[1].split()[0])
            continue
        m = re.match(r"Total (Host Walltime|GPU Compute Time):\s*([-+\d.eE]+)\s*s", line)
        if m:
            out["total_" + m.group(1).lower().replace(" ", "_") + "_s"] = float(m.group(2))
            continue
        name, _, rest = line.partition(":")
        if name in _LINES:
            stats = {}
            for key, pct, value in _STAT.findall(rest):
                stats[f"p{pct.rstrip('0').rstrip('.') if '.' in pct else pct}" if pct else key] = float(value)
            out[_LINES[name]] = stats
    if "throughput_qps" not in out or "gpu_compute_time_ms" not in out:
        raise ValueError("the trtexec performance summary lacks Throughput or GPU Compute Time")
    return out


# ---- polygraphy's verdict ----------------------------------------------------------------
def parse_polygraphy(text: str) -> dict[str, Any]:
    """Per-output PASSED/FAILED lines and the final verdict of `polygraphy run`."""
    outputs = {}
    for status, name in re.findall(r"(PASSED|FAILED) \| Output: '([^']+)'", text):
        outputs[name] = status == "PASSED"
    final = re.findall(r"\b(PASSED|FAILED) \| Runtime: ([\d.]+)s \| Command: ", text)
    passed = (final[-1][0] == "PASSED") if final else (bool(outputs) and all(outputs.values()))
    return {"passed": passed, "outputs": outputs}


# ---- commands ----------------------------------------------------------------------------
def _shape(dims: list[int], batch: int, name: str, overrides: dict[str, list[int]]) -> list[int]:
    if name in overrides:
        return overrides[name]
    out = [batch if d == -1 else d for d in dims]
    if any(d < 0 for d in out):
        raise ValueError(f"input {name!r} has an unknown dimension {dims}; pass --shape {name}:AxB")
    return out


def input_shapes(vision: VisionSection, batch: int, overrides: dict[str, list[int]] | None = None,
                 views: int = 1) -> dict[str, list[int]]:
    """Every input's shape; the dynamic leading axis is batch * views (views = 1 but anyres)."""
    return {i.name: _shape(i.shape, batch * views, i.name, overrides or {}) for i in vision.inputs}


# ---- LLaVA-NeXT (anyres) ------------------------------------------------------------------
def views_per_image(vision: VisionSection, views: int | None = None) -> int:
    """Views fed per image: 1 for LLaVA-1.5; for anyres `views` if it is a layout's view count,
    else the first budget's view count (pruned) or the widest layout (none)."""
    anyres = vision.anyres
    if anyres is None:
        if views not in (None, 1):
            raise ValueError("--views applies to LLaVA-NeXT (anyres) engine directories only")
        return 1
    counts = sorted({layout.views for layout in anyres.layouts})
    if views is None:
        budgets = anyres.view_budgets
        return budgets[0].views[0] if budgets else counts[-1]
    if views not in counts:
        raise ValueError(f"--views {views}: this engine's layouts have {', '.join(map(str, counts))} views")
    return views


def view_budget_value(vision: VisionSection, views: int) -> int | None:
    """The K_view every view of a `views`-view image gets (None: the engine has no budgets)."""
    for budget in vision.anyres.view_budgets if vision.anyres is not None else []:
        if views in budget.views:
            return budget.keep
    return None


def write_view_budget(work: Path, count: int, value: int) -> Path:
    """trtexec --loadInputs reads raw little-endian bytes of the input's dtype (int64 here)."""
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    path = work / "view_budget.bin"
    np.full(count, value, dtype="<i8").tofile(path)
    return path


def trtexec_command(engine_dir: Path, vision: VisionSection, shapes: dict[str, list[int]], trt_major: int,
                    trtexec: str = "trtexec", load_inputs: dict[str, Path] | None = None) -> list[str]:
    cmd = [trtexec, f"--loadEngine={engine_dir / vision.engine}"]
    library = vision.plugin.library if vision.plugin is not None else None
    if library:
        cmd.append(f"--dynamicPlugins={library}")
    cmd.append("--shapes=" + ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in shapes.items()))
    if load_inputs:
        cmd.append("--loadInputs=" + ",".join(f"{n}:{p}" for n, p in load_inputs.items()))
    if trt_major < 11:
        cmd += TRT10_COMPARABLE_FLAGS
    return cmd


def _tolerance_args() -> list[str]:
    return (["--atol"] + [f"{k}:{a}" for k, (a, _) in TOLERANCES.items()]
            + ["--rtol"] + [f"{k}:{r}" for k, (_, r) in TOLERANCES.items()])


def polygraphy_commands(engine_dir: Path, vision: VisionSection, shapes: dict[str, list[int]], work: Path,
                        constants: dict[str, int] | None = None) -> list[list[str]]:
    """ORT on the standard-op graph saves its inputs and outputs; the engine then runs on the
    very same inputs and is compared with them. `constants`: integer inputs generated as one
    value (anyres view_budget)."""
    shape_args = ["--input-shapes"] + [f"{n}:{list(s)}".replace(" ", "") for n, s in shapes.items()]
    if constants:
        shape_args += ["--val-range"] + [f"{n}:[{v},{v}]" for n, v in constants.items()]
    inputs, ort_out = work / "inputs.json", work / "ort_outputs.json"
    ort = ["polygraphy", "run", str(engine_dir / vision.onnx), "--onnxrt", *shape_args,
           "--save-inputs", str(inputs), "--save-outputs", str(ort_out)]
    trt = ["polygraphy", "run", str(engine_dir / vision.engine), "--model-type", "engine", "--trt",
           "--load-inputs", str(inputs), "--load-outputs", str(ort_out), *_tolerance_args()]
    library = vision.plugin.library if vision.plugin is not None else None
    if library:
        trt += ["--plugins", library]
    return [ort, trt]


def ort_vs_reference_command(onnx_path: Path, inputs: Path, reference: Path) -> list[str]:
    return ["polygraphy", "run", str(onnx_path), "--onnxrt", "--load-inputs", str(inputs),
            "--load-outputs", str(reference), *_tolerance_args()]


def _runnable(cmd: list[str]) -> list[str]:
    """The printed `polygraphy ...` command, run with this interpreter's polygraphy when the
    console script is not on PATH (a venv that is not activated)."""
    if cmd and cmd[0] == "polygraphy" and shutil.which("polygraphy") is None:
        return [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())", *cmd[1:]]
    return cmd


def run_polygraphy(cmd: list[str], cwd: Path | None = None) -> dict[str, Any]:
    proc = subprocess.run(_runnable(cmd), capture_output=True, text=True, cwd=cwd)
    result = parse_polygraphy(proc.stdout + proc.stderr)
    result["returncode"] = proc.returncode
    result["passed"] = result["passed"] and proc.returncode == 0
    return result


def save_reference(onnx_inputs: dict, reference_outputs: dict, work: Path) -> tuple[Path, Path]:
    """Polygraphy JSON files: the inputs (a list of feed dicts) and the reference outputs as
    RunResults under the runner name "pytorch"."""
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json

    inputs, outputs = work / "inputs.json", work / "torch_outputs.json"
    save_json([onnx_inputs], str(inputs))
    results = RunResults()
    results.append(("pytorch", [IterationResult(outputs=dict(reference_outputs), runner_name="pytorch")]))
    results.save(str(outputs))
    return inputs, outputs


def _reference_module(loaded, vision: VisionSection):
    """The PyTorch graph the engine directory's vision.onnx was exported from (fp32)."""
    from exporter.onnx_export import build_anyres_module, build_graph_module
    from exporter.pruning import make_config

    pruning = vision.pruning
    params = pruning.params
    projection = None
    if pruning.method == "hiprune++" and tensor(vision.inputs, Tensors.TEXT_EMBEDS) is not None:
        from models.text_tower import load_visual_projection

        projection = load_visual_projection(loaded)
    if vision.anyres is not None and pruning.method != "none":
        from exporter.anyres_plan import plan_anyres

        plan = plan_anyres(pruning.method, pruning.keep, loaded.config, params)
        return build_anyres_module(loaded.vision, plan, precision="fp32", clip_projection=projection)
    cfg = make_config(pruning.method, pruning.keep, grid=tuple(pruning.grid), num_layers=pruning.num_layers,
                      **params)
    return build_graph_module(loaded.vision, cfg, precision="fp32", clip_projection=projection)


def torch_reference(engine_dir: Path, config: EngineConfig, shapes: dict[str, list[int]], work: Path,
                    constants: dict[str, int] | None = None) -> dict[str, Any]:
    """CPU path: the engine directory's standard-op graph under ONNX Runtime vs the PyTorch
    graph it was exported from, on seeded random inputs (`constants`: int64 inputs)."""
    import numpy as np
    import torch

    from models import load_model

    loaded = load_model(config.model.name)
    module = _reference_module(loaded, config.vision)
    gen = torch.Generator().manual_seed(0)
    feeds = {
        n: torch.full(s, (constants or {})[n], dtype=torch.int64) if n in (constants or {})
        else torch.rand(*s, generator=gen)
        for n, s in shapes.items()
    }
    with torch.no_grad():
        outs = module(*feeds.values())
    names = [o.name for o in config.vision.outputs]
    ref = {n: o.numpy() for n, o in zip(names, outs)}
    arrays = {n: v.numpy() if v.dtype == torch.int64 else v.numpy().astype(np.float32) for n, v in feeds.items()}
    inputs, outputs = save_reference(arrays, ref, work)
    return run_polygraphy(ort_vs_reference_command(engine_dir / config.vision.onnx, inputs, outputs))


def _tensorrt_major() -> int | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return int(tensorrt.__version__.split(".")[0])


def compare(engine_dir: Path, batch: int, run: bool, overrides: dict[str, list[int]], work: Path,
            views: int | None = None) -> dict[str, Any]:
    return compare_config(read_config(engine_dir), engine_dir, batch, run, overrides, work, views)


def compare_config(config: EngineConfig, engine_dir: Path, batch: int, run: bool, overrides: dict[str, list[int]],
                   work: Path, views: int | None = None) -> dict[str, Any]:
    """One row for an engine directory's config.json (see `compare`)."""
    vision = config.vision
    views = views_per_image(vision, views)
    shapes = input_shapes(vision, batch, overrides, views)
    major = _tensorrt_major() or 10
    row: dict[str, Any] = {"engine_dir": str(engine_dir), "batch": batch, "selector": vision.selector}
    constants, load_inputs = {}, {}
    if vision.anyres is not None:
        row["views_per_image"] = views
    budget = view_budget_value(vision, views)
    if Tensors.VIEW_BUDGET in shapes and budget is not None:
        row["view_budget"] = constants[Tensors.VIEW_BUDGET] = budget
    has_engine = bool(vision.engine)
    if has_engine and constants:  # the printed trtexec command needs the file to exist
        load_inputs[Tensors.VIEW_BUDGET] = write_view_budget(work, shapes[Tensors.VIEW_BUDGET][0], budget)
    if has_engine:
        row["trtexec_command"] = shlex.join(trtexec_command(engine_dir, vision, shapes, major,
                                                            load_inputs=load_inputs))
        row["polygraphy_commands"] = [shlex.join(c) for c in
                                      polygraphy_commands(engine_dir, vision, shapes, work, constants)]
    if not run:
        return row
    trtexec = shutil.which("trtexec")
    if has_engine and trtexec and _tensorrt_major() is not None:
        proc = subprocess.run(trtexec_command(engine_dir, vision, shapes, major, trtexec, load_inputs),
                              capture_output=True, text=True)
        row["trtexec"] = parse_trtexec(proc.stdout)
        ort, trt = polygraphy_commands(engine_dir, vision, shapes, work, constants)
        subprocess.run(_runnable(ort), capture_output=True, text=True, check=True)
        row["polygraphy"] = run_polygraphy(trt)
    else:
        row["polygraphy_ort_vs_torch"] = torch_reference(engine_dir, config, shapes, work, constants)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine_dir", type=Path, nargs="+")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--views", type=int, help="LLaVA-NeXT: views per image (one of the layouts' view counts; "
                    "default: the first budget's)")
    ap.add_argument("--shape", action="append", default=[], metavar="NAME:AxB", help="override an input shape")
    ap.add_argument("--run", action="store_true", help="run the tools that are installed")
    ap.add_argument("--json", nargs="?", const="-", help="write rows as JSON (to FILE, or stdout)")
    ap.add_argument("--work", type=Path, help="folder for polygraphy's input/output files (default with --run: a "
                    "temporary folder, removed afterwards; without --run: compare-<engine dir name> here, "
                    "kept so the printed commands work)")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.shape:
        name, _, dims = item.rpartition(":")
        overrides[name] = [int(d) for d in dims.split("x")]
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="compare-") as scratch:
            for engine_dir in args.engine_dir:
                if args.work is not None:
                    work = args.work
                elif args.run:  # the commands were run: nothing to keep
                    work = Path(scratch) / engine_dir.resolve().name
                else:
                    work = Path(f"compare-{engine_dir.resolve().name}")
                if args.run:
                    work.mkdir(parents=True, exist_ok=True)
                with contextlib.redirect_stdout(sys.stderr):  # tools' chatter (polygraphy's logger) is not output
                    rows.append(compare(engine_dir, args.batch, args.run, overrides, work, args.views))
    except Exception as exc:  # noqa: BLE001 - one line for the user, no traceback
        from runtime.errors import one_line

        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    if args.json:
        text = json.dumps(rows, indent=2)
        print(text) if args.json == "-" else Path(args.json).write_text(text + "\n")
        return 0
    for row in rows:
        extra = f", {row['views_per_image']} views per image" if "views_per_image" in row else ""
        extra += f", view_budget {row['view_budget']}" if "view_budget" in row else ""
        print(f"# {row['engine_dir']} (batch {row['batch']}{extra}, selector {row['selector']})")
        for key in ("trtexec_command",):
            if key in row:
                print(row[key])
        for cmd in row.get("polygraphy_commands", []):
            print(cmd)
        if "trtexec" in row:
            t = row["trtexec"]
            gpu = t["gpu_compute_time_ms"]
            print(f"throughput {t['throughput_qps']:.1f} qps | GPU compute mean {gpu.get('mean')} ms "
                  f"median {gpu.get('median')} ms p99 {gpu.get('p99')} ms")
        for key in ("polygraphy", "polygraphy_ort_vs_torch"):
            if key in row:
                print(f"{key}: {'PASSED' if row[key]['passed'] else 'FAILED'} {row[key]['outputs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
