"""The EdgePruneSelect custom ONNX node: what the exporter puts in the graph when the
selection runs in the TensorRT plugin instead of the standard-op subgraph.

Float parameters travel as float32 ONNX attributes, which cannot carry Python's float64
values exactly (alpha = 0.1, keep = 25: float64 gives round(0.5) = 0 anchors, float32 gives
1). So the node also carries the derived integer counts, computed once by
`exporter.pruning.PruneConfig`, and the kernel uses only those; the plugin merely checks that
they are consistent with the float parameters.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from plugins import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

from .pruning import PruneConfig, vectorized

METHOD_IDS = {"hivtp": 1, "hiprune": 2, "hiprune++": 3}
BUFFER_EDGES_IDS = {"clamp": 0, "discard": 1}


def plugin_fields(cfg: PruneConfig) -> dict[str, Any]:
    """The plugin's fields for `cfg`, by name, in the order the node carries them. Ints and int
    lists become INT32 fields, floats FLOAT32 fields (config.json records this dict)."""
    if cfg.method not in METHOD_IDS:
        raise ValueError(
            f"method {cfg.method!r} has no plugin form (the plugin implements {', '.join(METHOD_IDS)})"
        )
    if cfg.keep is None:
        raise ValueError("keep must be an integer for the plugin (static output shape); got None")
    fields: dict[str, Any] = {
        "method": METHOD_IDS[cfg.method],
        "keep": int(cfg.keep),
        "grid": [int(cfg.grid[0]), int(cfg.grid[1])],
    }
    p = cfg.params
    if cfg.method == "hivtp":
        fields.update(
            regions=int(p["regions"]),
            layers=[int(i) for i in cfg.layers],
            per_region_budget=int(cfg.per_region_budget),
            window=int(cfg.window),
            global_fraction=float(p["global_fraction"]),
        )
    else:
        fields.update(
            object_layer=int(p["object_layer"]),
            deep_layer=int(p["deep_layer"]),
            buffer_edges=BUFFER_EDGES_IDS[p["buffer_edges"]],
            num_anchors=int(cfg.num_anchors),
            alpha=float(p["alpha"]),
        )
        if cfg.method == "hiprune++":
            fields.update(num_extra=int(cfg.num_extra), beta=float(p["beta"]))
    return fields


def onnx_attributes(cfg: PruneConfig) -> dict[str, Any]:
    """Node attributes for onnx.helper.make_node: the fields plus the plugin's identity."""
    return {**plugin_fields(cfg), "plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}


def _symbolic_kwargs(cfg: PruneConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in onnx_attributes(cfg).items():
        suffix = "s" if isinstance(value, str) else "f" if isinstance(value, float) else "i"
        out[f"{name}_{suffix}"] = value
    return out


class _PluginSelect(torch.autograd.Function):
    """Eager: the vectorised reference (bit-exact with the kernel). Traced: one custom node."""

    @staticmethod
    def forward(ctx, rows, similarity, cfg):  # noqa: ARG004 - ctx is part of the protocol
        return vectorized.select(cfg, rows, similarity).to(torch.int32)

    @staticmethod
    def symbolic(g, rows, similarity, cfg):
        inputs = [rows] if similarity is None else [rows, similarity]
        node = g.op(f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}", *inputs, **_symbolic_kwargs(cfg))
        # Batch stays symbolic (dynamic axes); the kept count is static.
        node.setType(rows.type().with_dtype(torch.int32).with_sizes([None, cfg.output_count]))
        return node


def plugin_selector(cfg: PruneConfig) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """A selector with the standard-op path's signature: (B, len(cfg.layers), N) float32 rows and
    the (B, N) prompt similarity (hiprune++ only) -> (B, K') int64 kept indices, ascending."""
    plugin_fields(cfg)  # fail at construction, not in the middle of a trace

    def selector(layer_rows: torch.Tensor, similarity: torch.Tensor | None = None) -> torch.Tensor:
        if cfg.method == "hiprune++":
            if similarity is None and cfg.num_extra == 0:
                # t = 0 (small K): the graph has no prompt input, but the plugin's hiprune++ mode
                # takes one; zeros are never read since no extra token is chosen
                similarity = torch.zeros_like(layer_rows[:, 0], dtype=torch.float32)
            if similarity is None:
                raise ValueError("hiprune++ needs the (B, N) text similarity")
            if similarity.dtype != torch.float32:
                similarity = similarity.to(torch.float32)
        else:
            similarity = None
        if layer_rows.dtype != torch.float32:  # no Cast node when already float32
            layer_rows = layer_rows.to(torch.float32)
        kept = _PluginSelect.apply(layer_rows, similarity, cfg)
        return kept.to(torch.int64)

    return selector
