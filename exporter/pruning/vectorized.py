"""The pruning rules as batched torch ops that export to standard ONNX (PRUNING.md section 2).

Every method becomes an integer priority per patch, `tier * (N + 1) + key`, followed by one
TopK. `key` is N minus the patch's rank by score (ties: lower index first), computed by
counting, so it is an exact small integer: adding tiers to raw float scores, as the spec's
`tier * 2 + score` reads, would round away score differences below ~5e-7 in float32 and break
the tie rule. All priorities are distinct, so TopK never meets a tie and ONNX Runtime,
TensorRT and the plugin kernel cannot disagree. No NonZero, no scatter, static output shape.
"""
from __future__ import annotations

import torch

from .config import PruneConfig


def _beats(values: torch.Tensor) -> torch.Tensor:
    """(B, N, N) bool: [b, p, q] is True when patch q outranks patch p (higher value, or equal
    value and lower index)."""
    n = values.shape[-1]
    idx = torch.arange(n)
    lower = idx[None, :] < idx[:, None]  # [p, q] = q < p
    vp = values.unsqueeze(-1)
    vq = values.unsqueeze(-2)
    return (vq > vp) | ((vq == vp) & lower)


def _count(mask: torch.Tensor) -> torch.Tensor:
    """Counts along the last axis in float32: exact below 2^24 and reducible by every backend."""
    return mask.to(torch.float32).sum(-1)


def _key(values: torch.Tensor) -> torch.Tensor:
    """N - rank: distinct integers 1..N, larger = better."""
    n = values.shape[-1]
    return n - _count(_beats(values))


def _same_block(grid: tuple[int, int], bh: int, bw: int) -> torch.Tensor:
    """(N, N) bool: patches p and q lie in the same bh x bw block of the grid."""
    gh, gw = grid
    rows = torch.arange(gh * gw) // gw
    cols = torch.arange(gh * gw) % gw
    block = (rows // bh) * (gw // bw) + cols // bw
    return block[:, None] == block[None, :]


def _top_mask(priority: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest (distinct) priorities, without any scatter."""
    threshold = torch.topk(priority, k, dim=-1).values[..., k - 1 :]
    return priority >= threshold


def _sorted_indices(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` True entries, ascending: TopK over mask * 2N + (N - index)."""
    n = mask.shape[-1]
    order = mask.to(torch.float32) * (2 * n) + (n - torch.arange(n, dtype=torch.float32))
    return torch.topk(order, count, dim=-1).indices


def hivtp_priority(importance: torch.Tensor, cfg: PruneConfig) -> torch.Tensor:
    n = cfg.num_patches
    beats = _beats(importance)
    key = n - _count(beats)
    rh, rw = cfg.region_shape
    region_rank = _count(beats & _same_block(cfg.grid, rh, rw))
    globally_kept = region_rank < cfg.per_region_budget

    # Best not-globally-kept patch of every window; globally kept ones count as key 0.
    w = cfg.window
    free_key = torch.where(globally_kept, torch.zeros_like(key), key)
    window_rank = _count(_beats(free_key) & _same_block(cfg.grid, w, w))
    candidate = (window_rank == 0) & ~globally_kept

    tier = 1 + candidate.to(torch.float32) + 2 * globally_kept.to(torch.float32)
    return tier * (n + 1) + key


def _shift(mask: torch.Tensor, offset: int) -> torch.Tensor:
    """out[p] = mask[p - offset] (zero where p - offset is outside 0..N-1)."""
    n = mask.shape[-1]
    pad = torch.zeros_like(mask[..., : abs(offset)])
    if offset > 0:
        return torch.cat([pad, mask[..., : n - offset]], dim=-1)
    return torch.cat([mask[..., -offset:], pad], dim=-1)


def anchors_and_buffers(object_score: torch.Tensor, cfg: PruneConfig) -> torch.Tensor:
    n = cfg.num_patches
    width = cfg.grid[1]
    anchors = (_count(_beats(object_score)) < cfg.num_anchors).to(torch.float32)
    col = torch.arange(n) % width
    if cfg.params["buffer_edges"] == "clamp":
        left_src, right_src = anchors, anchors
    else:  # no wrap across rows
        left_src = anchors * (col != 0).to(torch.float32)
        right_src = anchors * (col != width - 1).to(torch.float32)
    marked = anchors + _shift(right_src, 1) + _shift(left_src, -1)
    marked = marked + _shift(anchors, width) + _shift(anchors, -width)
    if cfg.params["buffer_edges"] == "clamp":
        # a - W below 0 clamps to patch 0; a + W past the end clamps to patch N-1
        position = torch.arange(n)
        first = (position == 0).to(torch.float32)
        last = (position == n - 1).to(torch.float32)
        marked = marked + anchors[..., :width].amax(-1, keepdim=True) * first
        marked = marked + anchors[..., n - width :].amax(-1, keepdim=True) * last
    return marked > 0


def hiprune_priority(object_score: torch.Tensor, deep_score: torch.Tensor, cfg: PruneConfig) -> torch.Tensor:
    n = cfg.num_patches
    tier = 1 + anchors_and_buffers(object_score, cfg).to(torch.float32)
    return tier * (n + 1) + _key(deep_score)


def select(
    cfg: PruneConfig,
    layer_rows: torch.Tensor,
    similarity: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kept indices (B, K') int64, ascending. `layer_rows` is (B, len(cfg.layers), N): the
    float32 patch scores of exactly the layers `cfg.layers` names, in that order."""
    batch = layer_rows.shape[0]
    n = cfg.num_patches
    if cfg.method == "none":
        return torch.arange(n).unsqueeze(0).expand(batch, n)
    if cfg.keep is None:
        raise ValueError("keep must be an integer for the vectorised (static-shape) form")
    rows = layer_rows.to(torch.float32)
    if cfg.method == "hivtp":
        importance = rows[:, 0]
        for i in range(1, rows.shape[1]):
            importance = importance + rows[:, i]
        priority = hivtp_priority(importance, cfg)
    else:
        priority = hiprune_priority(rows[:, 0], rows[:, 1], cfg)
    kept = _top_mask(priority, cfg.keep)
    if cfg.num_extra > 0:
        free_similarity = torch.where(kept, torch.zeros_like(priority), _key(similarity.to(torch.float32)))
        kept = kept | _top_mask(free_similarity, cfg.num_extra)
    return _sorted_indices(kept, cfg.output_count)
