"""Visual token pruning: the one reference for the whole project (PRUNING.md).

`select_tokens` runs the plain reference; `select_tokens_vectorized` runs the batched torch
form that the exporter puts into the ONNX graph. Both take the same arguments. VisionZip
returns merged tokens, not only indices: `visionzip` / `visionzip_vectorized`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from . import reference, vectorized
from .config import (
    CLS_ROW_METHODS,
    DEFAULT_PARAMS,
    METHODS,
    PruneConfig,
    default_contextual,
    make_config,
    round_half_even,
)

__all__ = [
    "CLS_ROW_METHODS",
    "DEFAULT_PARAMS",
    "METHODS",
    "PruneConfig",
    "VisionZipResult",
    "cls_attention",
    "default_contextual",
    "head_mean_keys",
    "layer_scores",
    "make_config",
    "round_half_even",
    "select_tokens",
    "select_tokens_vectorized",
    "visionzip",
    "visionzip_vectorized",
]


def layer_scores(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, L, 1+N) float32: per layer, the attention each token receives, averaged over heads
    and over every query row (PRUNING.md 1). Column 0 is CLS."""
    if len(attentions) == 0:
        raise ValueError("attentions must hold at least one (B, H, 1+N, 1+N) tensor")
    rows = []
    for i, att in enumerate(attentions):
        if att.dim() != 4 or att.shape[-1] != att.shape[-2]:
            raise ValueError(f"attentions[{i}] must be (B, H, S, S), got {tuple(att.shape)}")
        rows.append(att.float().mean(dim=(1, 2)))
    return torch.stack(rows, dim=1)


def cls_attention(attention: torch.Tensor) -> torch.Tensor:
    """(B, 1+N) float32: the CLS query row of one layer's attention probabilities
    (B, H, 1+N, 1+N), averaged over heads; column 0 is the CLS key (PRUNING.md 8.1). Pass
    `attentions[-2]` for SCOPE and VisionZip."""
    if attention.dim() != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"attention must be (B, H, S, S), got {tuple(attention.shape)}")
    return attention[:, :, 0, :].float().mean(dim=1)


def head_mean_keys(key_states: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, 1+N, Dk) float32: VisionZip's `metric`, the layer's k_proj output (B, 1+N, H*Dk)
    (with bias, before any scaling) split into `heads` heads and averaged over them (8.2)."""
    b, s, d = key_states.shape
    if d % heads:
        raise ValueError(f"key width {d} is not divisible by {heads} heads")
    return key_states.float().reshape(b, s, heads, d // heads).mean(dim=2)


def _cls_row_inputs(method, scores, keep, grid, params, cls_scores, features):
    if scores is not None:
        raise ValueError(f"{method} reads cls_scores, not layer scores: pass scores=None")
    if not isinstance(cls_scores, torch.Tensor) or cls_scores.dim() != 2:
        raise ValueError("cls_scores must be a (B, 1+N) tensor (the CLS query row, CLS at column 0)")
    cfg = make_config(method, keep, grid=tuple(grid), **params)
    n = cfg.num_patches
    if cls_scores.shape[1] != n + 1:
        raise ValueError(f"grid {cfg.grid[0]}x{cfg.grid[1]} needs cls_scores with 1+{n} columns, got {cls_scores.shape[1]}")
    batch = cls_scores.shape[0]
    if not isinstance(features, torch.Tensor) or features.dim() != 3 or tuple(features.shape[:2]) != (batch, n):
        raise ValueError(f"features must be a ({batch}, {n}, D) tensor of patch features (no CLS row)")
    return cfg, cls_scores[:, 1:].float()


def _prepare(method, scores, keep, grid, params) -> tuple[PruneConfig, torch.Tensor]:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
        raise ValueError("scores must be a (B, L, 1+N) tensor")
    cfg = make_config(method, keep, grid=tuple(grid), num_layers=scores.shape[1], **params)
    if scores.shape[-1] != cfg.num_patches + 1:
        raise ValueError(
            f"grid {cfg.grid[0]}x{cfg.grid[1]} needs scores with 1+{cfg.num_patches} columns, "
            f"got {scores.shape[-1]}"
        )
    return cfg, scores[..., 1:].float()


def _check_similarity(cfg: PruneConfig, text_similarity, batch: int) -> torch.Tensor | None:
    if cfg.method != "hiprune++":
        if text_similarity is not None:
            raise ValueError(f"text_similarity is only used by hiprune++, not {cfg.method!r}")
        return None
    if not isinstance(text_similarity, torch.Tensor) or tuple(text_similarity.shape) != (batch, cfg.num_patches):
        raise ValueError(f"text_similarity must be a ({batch}, {cfg.num_patches}) tensor for hiprune++")
    return text_similarity.float()


def select_tokens(
    method: str,
    scores: torch.Tensor,
    keep: int | None,
    *,
    grid: tuple[int, int] = (24, 24),
    text_similarity: torch.Tensor | None = None,
    cls_scores: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    **params: Any,
):
    """Kept patch indices (0..N-1) per image, ascending, int64 (B, K'). For hivtp with
    keep=None (released, variable count) a list of B 1-D tensors instead.

    SCOPE: `select_tokens("scope", None, K, cls_scores=(B, 1+N), features=(B, N, D), alpha=1.0)`
    with the feature layer's CLS row (`cls_attention(attentions[-2])`) and patch features
    (`hidden_states[-2][:, 1:]`)."""
    if method == "visionzip":
        raise ValueError("visionzip merges tokens: call exporter.pruning.visionzip(...), not select_tokens")
    if method == "scope":
        cfg, saliency = _cls_row_inputs(method, scores, keep, grid, params, cls_scores, features)
        kept = [reference.scope(saliency[b], features[b], cfg) for b in range(saliency.shape[0])]
        return torch.tensor(kept, dtype=torch.int64).reshape(len(kept), cfg.keep)
    cfg, patch_scores = _prepare(method, scores, keep, grid, params)
    sim = _check_similarity(cfg, text_similarity, scores.shape[0])
    per_image = [
        torch.tensor(
            reference.select_one(patch_scores[b], cfg, None if sim is None else sim[b]),
            dtype=torch.int64,
        )
        for b in range(scores.shape[0])
    ]
    if cfg.output_count is None:
        return per_image
    if not per_image:
        return torch.zeros((0, cfg.output_count), dtype=torch.int64)
    return torch.stack(per_image)


def select_tokens_vectorized(
    method: str,
    scores: torch.Tensor,
    keep: int | None,
    *,
    grid: tuple[int, int] = (24, 24),
    text_similarity: torch.Tensor | None = None,
    cls_scores: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    **params: Any,
) -> torch.Tensor:
    """The exportable batched form; same arguments and result as `select_tokens`."""
    if method == "visionzip":
        raise ValueError("visionzip merges tokens: call exporter.pruning.visionzip_vectorized(...)")
    if method == "scope":
        cfg, saliency = _cls_row_inputs(method, scores, keep, grid, params, cls_scores, features)
        return vectorized.scope(cfg, saliency, features)
    cfg, patch_scores = _prepare(method, scores, keep, grid, params)
    sim = _check_similarity(cfg, text_similarity, scores.shape[0])
    rows = patch_scores[:, list(cfg.layers)] if cfg.layers else patch_scores[:, :0]
    return vectorized.select(cfg, rows, sim)


@dataclass(frozen=True)
class VisionZipResult:
    """tokens (B, D + C, hidden) float32 in the released order [CLS, dominant rows ascending,
    contextual tokens in target order]; dominant (B, D - 1) and targets (B, C) patch indices;
    assignment (B, N) int64: -1 for a dominant patch, else the contextual slot it joined (a
    target joins its own slot)."""

    tokens: torch.Tensor
    dominant: torch.Tensor
    targets: torch.Tensor
    assignment: torch.Tensor


def _visionzip_inputs(cls_scores, hidden_states, keys, dominant, contextual, grid, params):
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3:
        raise ValueError("hidden_states must be a (B, 1+N, D) tensor with the CLS row first")
    batch, seq = hidden_states.shape[:2]
    n = seq - 1
    if grid is None:
        side = int(round(n ** 0.5))
        grid = (side, side) if side * side == n else (1, n)
    if isinstance(dominant, bool) or not isinstance(dominant, int) or dominant < 1:
        raise ValueError(f"dominant must be an integer >= 1 (it counts the CLS token), got {dominant!r}")
    if isinstance(contextual, bool) or not isinstance(contextual, int):
        raise ValueError(f"contextual must be an integer >= 1, got {contextual!r}")
    cfg = make_config("visionzip", dominant + contextual, grid=tuple(grid), contextual=contextual, **params)
    if cfg.num_patches != n:
        raise ValueError(f"grid {cfg.grid[0]}x{cfg.grid[1]} needs hidden_states with 1+{cfg.num_patches} rows, got {seq}")
    if not isinstance(cls_scores, torch.Tensor) or tuple(cls_scores.shape) != (batch, seq):
        raise ValueError(f"cls_scores must be a ({batch}, {seq}) tensor (the CLS query row, CLS at column 0)")
    if not isinstance(keys, torch.Tensor) or keys.dim() != 3 or tuple(keys.shape[:2]) != (batch, seq):
        raise ValueError(f"keys must be a ({batch}, {seq}, Dk) tensor of head-mean keys with the CLS row")
    return cfg, cls_scores[:, 1:].float()


def visionzip(
    *,
    cls_scores: torch.Tensor,
    hidden_states: torch.Tensor,
    keys: torch.Tensor,
    dominant: int,
    contextual: int,
    grid: tuple[int, int] | None = None,
    **params: Any,
) -> VisionZipResult:
    """The reference VisionZip (PRUNING.md 10) with the authors' arguments: `dominant` = D
    counts the CLS token (D - 1 dominant patches), `contextual` = C merged tokens, D + C tokens
    out. cls_scores (B, 1+N) = `cls_attention(attentions[-2])`; hidden_states (B, 1+N, D) =
    `hidden_states[-2]` with the CLS row; keys (B, 1+N, Dk) = `head_mean_keys` of layer L-1."""
    cfg, saliency = _visionzip_inputs(cls_scores, hidden_states, keys, dominant, contextual, grid, params)
    per_image = [reference.visionzip(saliency[b], hidden_states[b], keys[b], cfg) for b in range(saliency.shape[0])]
    batch = len(per_image)

    def stack(key, width):
        return torch.tensor([r[key] for r in per_image], dtype=torch.int64).reshape(batch, width)

    tokens = (torch.stack([r["tokens"] for r in per_image]) if per_image
              else torch.zeros(0, cfg.keep, hidden_states.shape[-1]))
    return VisionZipResult(tokens, stack("dominant", cfg.dominant_patches), stack("targets", cfg.contextual),
                           stack("assignment", cfg.num_patches))


def visionzip_vectorized(
    *,
    cls_scores: torch.Tensor,
    hidden_states: torch.Tensor,
    keys: torch.Tensor,
    dominant: int,
    contextual: int,
    grid: tuple[int, int] | None = None,
    **params: Any,
) -> VisionZipResult:
    """The exportable batched form of `visionzip`; same arguments and result."""
    cfg, saliency = _visionzip_inputs(cls_scores, hidden_states, keys, dominant, contextual, grid, params)
    tokens, kept, assignment = vectorized.visionzip(cfg, saliency, hidden_states, keys, with_assignment=True)
    kd = cfg.dominant_patches
    return VisionZipResult(tokens, kept[:, 1 : 1 + kd], kept[:, 1 + kd :], assignment)
