"""Visual token pruning: the one reference for the whole project (PRUNING.md).

`select_tokens` runs the plain reference; `select_tokens_vectorized` runs the batched torch
form that the exporter puts into the ONNX graph. Both take the same arguments.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import reference, vectorized
from .config import DEFAULT_PARAMS, METHODS, PruneConfig, make_config, round_half_even

__all__ = [
    "DEFAULT_PARAMS",
    "METHODS",
    "PruneConfig",
    "layer_scores",
    "make_config",
    "round_half_even",
    "select_tokens",
    "select_tokens_vectorized",
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
    **params: Any,
):
    """Kept patch indices (0..N-1) per image, ascending, int64 (B, K'). For hivtp with
    keep=None (released, variable count) a list of B 1-D tensors instead."""
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
    **params: Any,
) -> torch.Tensor:
    """The exportable batched form; same arguments and result as `select_tokens`."""
    cfg, patch_scores = _prepare(method, scores, keep, grid, params)
    sim = _check_similarity(cfg, text_similarity, scores.shape[0])
    rows = patch_scores[:, list(cfg.layers)] if cfg.layers else patch_scores[:, :0]
    return vectorized.select(cfg, rows, sim)
