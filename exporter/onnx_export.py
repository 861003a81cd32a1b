"""ONNX export of the pruned vision graph (LLaVA-1.5, and LLaVA-NeXT's branched per-view form
in exporter.anyres_graph) with pinned opset / IR version.

Opset 17 (LayerNormalization) with IR version 8 is what ONNX Runtime, TensorRT 10.3's parser
(JetPack 6.1/6.2) and TensorRT-RTX all accept; newer onnx releases would otherwise stamp a
newer IR version that older runtimes reject.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from models.parts import VisionParts
from runtime.contract import Tensors as T
from runtime.contract import TensorSpec

from .anyres_graph import AnyresVisionGraph, SelectorFactory
from .anyres_plan import AnyresPlan
from .onnx_versions import BASE
from .pruning import PruneConfig
from .vision_graph import PrunedVisionGraph, Selector, debug_output_names

ONNX_OPSET, ONNX_IR_VERSION = BASE
EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which tensors go to a .data file

TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16}
DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64"}


@dataclass(frozen=True)
class VisionGraphIO:
    """What an exported vision graph declares (recorded in config.json) and the files written."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: list[str] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def vision_io(parts: VisionParts, cfg: PruneConfig, precision: str, debug_scores: bool, *, rows: int | None = None,
              text_dim: int | None = None, budgets: bool = False) -> VisionGraphIO:
    """The graph's declared I/O (-1 = dynamic batch, or views for LLaVA-NeXT): `rows` per image
    (default K; anyres: the widest branch), `budgets`: the anyres view_budget input."""
    dtype = DTYPE_NAME[TORCH_DTYPE[precision]]
    size, k = parts.image_size, rows if rows is not None else cfg.output_count
    inputs = [TensorSpec(T.PIXEL_VALUES, [-1, 3, size, size], dtype)]
    if budgets:
        inputs.append(TensorSpec(T.VIEW_BUDGET, [-1], "int64"))
    if text_dim is not None:
        inputs.append(TensorSpec(T.TEXT_EMBEDS, [-1, text_dim], "float32"))
    outputs = [TensorSpec(T.VISUAL_FEATURES, [-1, k, parts.llm_hidden], dtype), TensorSpec(T.KEPT_INDICES, [-1, k], "int64")]
    if debug_scores:
        outputs += debug_outputs(cfg)
    return VisionGraphIO(inputs, outputs)


def debug_outputs(cfg: PruneConfig) -> list[TensorSpec]:
    """`--debug-scores` outputs: layer_scores (B, L, 1+N) for the column-mean methods;
    cls_scores (B, 1+N) for SCOPE / VisionZip, plus VisionZip's token_assignment (B, N) int64
    (-1 dominant, else the contextual slot)."""
    n = cfg.num_patches
    shapes = {
        T.LAYER_SCORES: ([-1, len(cfg.layers), n + 1], "float32"),
        T.CLS_SCORES: ([-1, n + 1], "float32"),
        T.TOKEN_ASSIGNMENT: ([-1, n], "int64"),
    }
    return [TensorSpec(name, *shapes[name]) for name in debug_output_names(cfg)]


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
) -> VisionGraphIO:
    """Export to `path`; returns the I/O description and the file names written."""
    module = build_graph_module(
        parts, cfg, precision=precision, selector=selector, debug_scores=debug_scores,
        clip_projection=clip_projection,
    )
    size = parts.image_size
    text_dim = clip_projection.out_features if cfg.uses_prompt else None
    io = vision_io(parts, cfg, precision, debug_scores, text_dim=text_dim)
    pixel_values = torch.zeros(2, 3, size, size, dtype=TORCH_DTYPE[precision])
    args: tuple = (pixel_values,) if text_dim is None else (pixel_values, torch.ones(2, text_dim))
    dynamic_axes = {name: {0: "batch"} for name in io.input_names + io.output_names}
    files = _save_onnx(module, args, Path(path), io.input_names, io.output_names, dynamic_axes)
    return replace(io, files=files)


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
) -> VisionGraphIO:
    """Export the branched graph of a pruned anyres plan (`selector_factory`: one selector per
    branch config, e.g. `exporter.plugin_node.plugin_selector`; default the standard ops)."""
    module = build_anyres_module(parts, plan, precision=precision, selector_factory=selector_factory,
                                 debug_scores=debug_scores, clip_projection=clip_projection)
    size = parts.image_size
    views = 2  # as for LLaVA-1.5: a traced size of 1 could be specialised away
    text_dim = clip_projection.out_features if plan.uses_prompt else None
    io = vision_io(parts, plan.config, precision, debug_scores, rows=plan.rows, text_dim=text_dim, budgets=True)
    pixel_values = torch.zeros(views, 3, size, size, dtype=TORCH_DTYPE[precision])
    view_budget = torch.tensor([plan.branches[0].keep, plan.branches[-1].keep], dtype=torch.int64)
    args: tuple = (pixel_values, view_budget) if text_dim is None else (pixel_values, view_budget,
                                                                       torch.ones(views, text_dim))
    dynamic_axes = {name: {0: "views"} for name in io.input_names + io.output_names}
    files = _save_onnx(module, args, Path(path), io.input_names, io.output_names, dynamic_axes)
    return replace(io, files=files)
