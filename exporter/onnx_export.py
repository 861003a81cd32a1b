"""ONNX export of the pruned vision graph (LLaVA-1.5, and LLaVA-NeXT's branched per-view form
in exporter.anyres_graph) with pinned opset / IR version.

Opset 17 (LayerNormalization) with IR version 8 is what ONNX Runtime, TensorRT 10.3's parser
(JetPack 6.1/6.2) and TensorRT-RTX all accept; newer onnx releases would otherwise stamp a
newer IR version that older runtimes reject.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

from models.parts import VisionParts

from .onnx_versions import BASE
from .anyres_graph import AnyresVisionGraph, SelectorFactory
from .anyres_plan import AnyresPlan
from .pruning import PruneConfig
from .vision_graph import PrunedVisionGraph, Selector, debug_output_names

ONNX_OPSET, ONNX_IR_VERSION = BASE
EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which tensors go to a .data file

TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16}
DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64"}


def vision_io(parts: VisionParts, cfg: PruneConfig, precision: str, debug_scores: bool) -> dict[str, list]:
    """The graph's declared I/O (-1 = dynamic batch), recorded in config.json."""
    dtype = DTYPE_NAME[TORCH_DTYPE[precision]]
    size = parts.image_size
    k = cfg.output_count
    inputs = [{"name": "pixel_values", "shape": [-1, 3, size, size], "dtype": dtype}]
    if cfg.uses_prompt:
        inputs.append({"name": "text_embeds", "shape": [-1, -2], "dtype": "float32"})
    outputs = [
        {"name": "visual_features", "shape": [-1, k, parts.llm_hidden], "dtype": dtype},
        {"name": "kept_indices", "shape": [-1, k], "dtype": "int64"},
    ]
    if debug_scores:
        outputs += debug_outputs(cfg)
    return {"inputs": inputs, "outputs": outputs}


def debug_outputs(cfg: PruneConfig) -> list[dict]:
    """`--debug-scores` outputs: layer_scores (B, L, 1+N) for the column-mean methods;
    cls_scores (B, 1+N) for SCOPE / VisionZip, plus VisionZip's token_assignment (B, N) int64
    (-1 dominant, else the contextual slot)."""
    n = cfg.num_patches
    shapes = {
        "layer_scores": ([-1, len(cfg.layers), n + 1], "float32"),
        "cls_scores": ([-1, n + 1], "float32"),
        "token_assignment": ([-1, n], "int64"),
    }
    return [{"name": name, "shape": shapes[name][0], "dtype": shapes[name][1]} for name in debug_output_names(cfg)]


def build_graph_module(
    parts: VisionParts,
    cfg: PruneConfig,
    *,
    precision: str = "fp32",
    selector: Selector | None = None,
    debug_scores: bool = False,
    clip_projection: torch.nn.Module | None = None,
) -> PrunedVisionGraph:
    dtype = TORCH_DTYPE[precision]
    if dtype != torch.float32 or next(parts.clip.parameters()).dtype != dtype:
        parts = VisionParts(
            copy.deepcopy(parts.vision_tower).to(dtype), copy.deepcopy(parts.projector).to(dtype), parts.config
        )
        if clip_projection is not None:
            clip_projection = copy.deepcopy(clip_projection).to(dtype)
    return PrunedVisionGraph(
        parts, cfg, selector=selector, debug_scores=debug_scores, clip_projection=clip_projection
    ).eval()


def export_vision_onnx(
    parts: VisionParts,
    cfg: PruneConfig,
    path: Path,
    *,
    precision: str = "fp32",
    selector: Selector | None = None,
    debug_scores: bool = False,
    clip_projection: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Export to `path`; returns the I/O description and the file names written."""
    module = build_graph_module(
        parts, cfg, precision=precision, selector=selector, debug_scores=debug_scores,
        clip_projection=clip_projection,
    )
    size = parts.image_size
    dtype = TORCH_DTYPE[precision]
    pixel_values = torch.zeros(2, 3, size, size, dtype=dtype)
    args: tuple = (pixel_values,)
    input_names = ["pixel_values"]
    dynamic_axes: dict[str, dict[int, str]] = {"pixel_values": {0: "batch"}}
    if cfg.uses_prompt:
        args = (pixel_values, torch.ones(2, clip_projection.out_features))
        input_names.append("text_embeds")
        dynamic_axes["text_embeds"] = {0: "batch"}
    output_names = ["visual_features", "kept_indices"] + (debug_output_names(cfg) if debug_scores else [])
    for name in output_names:
        dynamic_axes[name] = {0: "batch"}
    files = _save_onnx(module, args, Path(path), input_names, output_names, dynamic_axes)
    io = vision_io(parts, cfg, precision, debug_scores)
    if cfg.uses_prompt:
        io["inputs"][1]["shape"] = [-1, clip_projection.out_features]
    return {**io, "files": files}


def _save_onnx(module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> list[str]:
    """Trace to `path` with the pinned opset / IR version (weights over 1 GiB go to a .data
    file); returns the file names written."""
    import onnx

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET, dynamo=False,
        )
    model = onnx.load(str(path))
    model.ir_version = ONNX_IR_VERSION
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    files = [path.name]
    if weight_bytes > EXTERNAL_DATA_THRESHOLD:
        data_name = path.name + ".data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        files.append(data_name)
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return files


# ---- LLaVA-NeXT (anyres) --------------------------------------------------------------------
def anyres_vision_io(parts: VisionParts, plan: AnyresPlan, precision: str, debug_scores: bool,
                     text_dim: int | None = None) -> dict[str, list]:
    """I/O of the branched anyres graph: V views of any images (-1), each with its K_view."""
    dtype = DTYPE_NAME[TORCH_DTYPE[precision]]
    size, r = parts.image_size, plan.rows
    inputs = [
        {"name": "pixel_values", "shape": [-1, 3, size, size], "dtype": dtype},
        {"name": "view_budget", "shape": [-1], "dtype": "int64"},
    ]
    if plan.uses_prompt:
        inputs.append({"name": "text_embeds", "shape": [-1, text_dim or -2], "dtype": "float32"})
    outputs = [
        {"name": "visual_features", "shape": [-1, r, parts.llm_hidden], "dtype": dtype},
        {"name": "kept_indices", "shape": [-1, r], "dtype": "int64"},
    ]
    if debug_scores:
        outputs += debug_outputs(plan.config)
    return {"inputs": inputs, "outputs": outputs}


def build_anyres_module(
    parts: VisionParts,
    plan: AnyresPlan,
    *,
    precision: str = "fp32",
    selector_factory: SelectorFactory | None = None,
    debug_scores: bool = False,
    clip_projection: torch.nn.Module | None = None,
) -> AnyresVisionGraph:
    encoder = build_graph_module(parts, plan.config, precision=precision, debug_scores=debug_scores,
                                 clip_projection=clip_projection)
    return AnyresVisionGraph(encoder, plan, selector_factory).eval()


def export_anyres_vision_onnx(
    parts: VisionParts,
    plan: AnyresPlan,
    path: Path,
    *,
    precision: str = "fp32",
    selector_factory: SelectorFactory | None = None,
    debug_scores: bool = False,
    clip_projection: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Export the branched graph of a pruned anyres plan (`selector_factory`: one selector per
    branch config, e.g. `exporter.plugin_node.plugin_selector`; default the standard ops)."""
    module = build_anyres_module(parts, plan, precision=precision, selector_factory=selector_factory,
                                 debug_scores=debug_scores, clip_projection=clip_projection)
    size = parts.image_size
    views = 2  # as for LLaVA-1.5: a traced size of 1 could be specialised away
    pixel_values = torch.zeros(views, 3, size, size, dtype=TORCH_DTYPE[precision])
    view_budget = torch.tensor([plan.branches[0].keep, plan.branches[-1].keep], dtype=torch.int64)
    args: tuple = (pixel_values, view_budget)
    input_names = ["pixel_values", "view_budget"]
    text_dim = None
    if plan.uses_prompt:
        text_dim = clip_projection.out_features
        args = (*args, torch.ones(views, text_dim))
        input_names.append("text_embeds")
    output_names = ["visual_features", "kept_indices"] + (debug_output_names(plan.config) if debug_scores else [])
    dynamic_axes = {name: {0: "views"} for name in input_names + output_names}
    files = _save_onnx(module, args, Path(path), input_names, output_names, dynamic_axes)
    return {**anyres_vision_io(parts, plan, precision, debug_scores, text_dim), "files": files}
