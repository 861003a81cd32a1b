"""The plain, per-image reference of every pruning rule in PRUNING.md.

This is the project's single source of truth: the vectorised torch form, the ONNX graph and
the plugin kernel are all tested against these functions. It favours obviousness over speed:
sets, sorted lists and explicit loops that read like the specification.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .config import PruneConfig


def _best_first(candidates, score: Sequence[float]) -> list[int]:
    """Highest score first; on equal scores the lower patch index wins (project tie rule)."""
    return sorted(candidates, key=lambda p: (-score[p], p))


def hivtp_importance(layer_scores: torch.Tensor, cfg: PruneConfig) -> list[float]:
    """The layers' mean without its constant 1/len(layers): the same order, but no rounding
    of the division that could turn two distinct sums into a tie. Summed in float32 in layer
    order, exactly as the graph and the kernel do, so all three agree bit for bit."""
    total = layer_scores[cfg.layers[0]].float()
    for i in cfg.layers[1:]:
        total = total + layer_scores[i].float()
    return total.tolist()


def _region_patches(cfg: PruneConfig, region_row: int, region_col: int) -> list[int]:
    rh, rw = cfg.region_shape
    gw = cfg.grid[1]
    return [
        (region_row * rh + r) * gw + region_col * rw + c for r in range(rh) for c in range(rw)
    ]


def _windows(cfg: PruneConfig, w: int) -> list[list[int]]:
    """All w x w windows over the grid, each listing its patches in visit order (row-major)."""
    gh, gw = cfg.grid
    return [
        [(wr * w + r) * gw + wc * w + c for r in range(w) for c in range(w)]
        for wr in range(gh // w)
        for wc in range(gw // w)
    ]


def hivtp(importance: Sequence[float], cfg: PruneConfig) -> list[int]:
    r = cfg.params["regions"]
    globally_kept: set[int] = set()
    for rr in range(r):
        for rc in range(r):
            region = _region_patches(cfg, rr, rc)
            globally_kept.update(_best_first(region, importance)[: cfg.per_region_budget])

    candidates = []
    for window in _windows(cfg, cfg.window):
        free = [p for p in window if p not in globally_kept]
        if free:  # a window whose patches are all globally kept is skipped
            candidates.append(_best_first(free, importance)[0])

    if cfg.keep is None:  # released behaviour: the union, whatever its size
        return sorted(globally_kept | set(candidates))

    local_budget = cfg.keep - len(globally_kept)
    kept = set(globally_kept)
    kept.update(_best_first(candidates, importance)[:local_budget])
    rest = [p for p in range(cfg.num_patches) if p not in kept]
    kept.update(_best_first(rest, importance)[: cfg.keep - len(kept)])
    return sorted(kept)


def _neighbours(anchor: int, cfg: PruneConfig) -> list[int]:
    n = cfg.num_patches
    width = cfg.grid[1]
    if cfg.params["buffer_edges"] == "clamp":  # released code: 1-D offsets clamped to [0, N-1]
        return [min(max(anchor + d, 0), n - 1) for d in (-1, 1, -width, width)]
    out = []  # paper's equation: only true grid neighbours
    col = anchor % width
    if col > 0:
        out.append(anchor - 1)
    if col < width - 1:
        out.append(anchor + 1)
    if anchor - width >= 0:
        out.append(anchor - width)
    if anchor + width < n:
        out.append(anchor + width)
    return out


def hiprune(object_score: Sequence[float], deep_score: Sequence[float], cfg: PruneConfig) -> list[int]:
    anchors = _best_first(range(cfg.num_patches), object_score)[: cfg.num_anchors]
    anchors_and_buffers = set(anchors)
    for a in anchors:
        anchors_and_buffers.update(_neighbours(a, cfg))
    if len(anchors_and_buffers) > cfg.keep:
        raise ValueError(
            f"keep={cfg.keep} is smaller than the {len(anchors_and_buffers)} anchor and buffer tokens"
        )
    rest = [p for p in range(cfg.num_patches) if p not in anchors_and_buffers]
    registers = _best_first(rest, deep_score)[: cfg.keep - len(anchors_and_buffers)]
    return sorted(anchors_and_buffers | set(registers))


def add_prompt_tokens(kept: Sequence[int], similarity: Sequence[float], cfg: PruneConfig) -> list[int]:
    """HiPrune++: the t unselected patches most similar to the prompt join the kept set."""
    chosen = set(kept)
    unselected = [p for p in range(cfg.num_patches) if p not in chosen]
    return sorted(chosen | set(_best_first(unselected, similarity)[: cfg.num_extra]))


def select_one(
    layer_scores: torch.Tensor,
    cfg: PruneConfig,
    similarity: torch.Tensor | None = None,
) -> list[int]:
    """Kept patch indices for one image. `layer_scores` is (L, N): row i holds encoder layer
    i+1's patch scores, CLS already dropped."""
    if cfg.method == "none":
        return list(range(cfg.num_patches))
    if cfg.method == "hivtp":
        return hivtp(hivtp_importance(layer_scores, cfg), cfg)
    obj = layer_scores[cfg.object_layer_index].float().tolist()
    deep = layer_scores[cfg.deep_layer_index].float().tolist()
    kept = hiprune(obj, deep, cfg)
    if cfg.method == "hiprune++":
        kept = add_prompt_tokens(kept, similarity.float().tolist(), cfg)
    return kept


# ---- SCOPE (PRUNING.md 9) -------------------------------------------------------------------
def cosine_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, N) float32 cosine similarity of the rows: each row divided by its norm (no epsilon,
    as released: a zero row gives NaN), then one matrix product."""
    x = features.float()
    x = x / x.norm(dim=-1, keepdim=True)
    return x @ x.T


def scope_order(saliency: torch.Tensor, features: torch.Tensor, cfg: PruneConfig, steps: int) -> list[int]:
    """SCOPE's greedy picks, in pick order, for one image: `steps` times, every unselected
    patch j scores coverage gain * saliency, gain[j] = sum over ALL i of max(0, S[i, j] - c[i]),
    the best one joins (ties: the lower index, as torch.argmax), and c = max(c, S[j]).

    saliency: (N,) CLS-row scores of the patches (CLS column already dropped)."""
    sim = cosine_matrix(features)
    a = saliency.float()
    if cfg.params["alpha"] != 1.0:
        a = a ** cfg.params["alpha"]
    additive = cfg.params["combine"] == "add"
    a = a.tolist()
    cover = torch.zeros(cfg.num_patches)
    picked: list[int] = []
    chosen: set[int] = set()
    for _ in range(steps):
        gain = torch.relu(sim - cover[:, None]).sum(0).tolist()
        score = [g + s if additive else g * s for g, s in zip(gain, a)]
        best = min((j for j in range(cfg.num_patches) if j not in chosen), key=lambda j: (-score[j], j))
        picked.append(best)
        chosen.add(best)
        cover = torch.maximum(cover, sim[best])
    return picked


def scope(saliency: torch.Tensor, features: torch.Tensor, cfg: PruneConfig) -> list[int]:
    """Kept patches of one image, ascending: the K greedy picks."""
    return sorted(scope_order(saliency, features, cfg, cfg.keep))


# ---- VisionZip (PRUNING.md 10) --------------------------------------------------------------
def visionzip(saliency: torch.Tensor, hidden: torch.Tensor, keys: torch.Tensor, cfg: PruneConfig) -> dict:
    """One image. saliency (N,) CLS-row scores of the patches; hidden (1+N, D) the feature
    layer's output with the CLS row; keys (1+N, Dk) its head-mean keys.

    Returns tokens (1 + Kd + C, D) float32 [CLS, dominant rows ascending, contextual tokens in
    target order], dominant (Kd patches, ascending), targets (C patches, in target order) and
    assignment (N,): -1 for a dominant patch, else the contextual slot it joined."""
    n = cfg.num_patches
    s = saliency.float().tolist()
    dominant = sorted(_best_first(range(n), s)[: cfg.dominant_patches])
    is_dominant = set(dominant)
    rest = [p for p in range(n) if p not in is_dominant]  # ascending
    targets = [rest[i] for i in cfg.target_positions]
    is_target = set(targets)
    others = [p for p in rest if p not in is_target]

    k = keys.float()
    k = k / k.norm(dim=-1, keepdim=True)
    # cos(other, target) for every pair: products summed over the key width. (The released
    # bmm computes the same sums; a spelled-out product keeps the rounding independent of how
    # a matrix-product kernel blocks the batch.)
    cos = (k[[1 + p for p in others]][:, None, :] * k[[1 + t for t in targets]][None, :, :]).sum(-1).tolist()
    assignment = [-1] * n
    for slot, t in enumerate(targets):
        assignment[t] = slot
    for row, p in zip(cos, others):
        assignment[p] = _best_first(range(len(targets)), row)[0]  # first maximum

    h = hidden.float()
    contextual = []
    for slot, t in enumerate(targets):
        group = [p for p in others if assignment[p] == slot]
        merged = h[[1 + p for p in group]].sum(0) / len(group) if group else torch.zeros_like(h[0])
        contextual.append(h[1 + t] + merged)  # the target plus the mean of its group
    rows = [h[0]] + [h[1 + p] for p in dominant] + contextual
    return {"tokens": torch.stack(rows), "dominant": dominant, "targets": targets, "assignment": assignment}
