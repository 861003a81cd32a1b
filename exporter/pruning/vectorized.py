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


# ---- SCOPE (PRUNING.md 9.2) -----------------------------------------------------------------
def cosine_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, N, N) float32 cosine similarity of each image's rows (no epsilon, as released)."""
    x = features.float()
    x = x / x.norm(dim=-1, keepdim=True)
    return torch.matmul(x, x.transpose(1, 2))


def scope_pick_steps(sim: torch.Tensor, add: torch.Tensor, mul: torch.Tensor, steps: int,
                     unrolled: bool = False) -> torch.Tensor:
    """SCOPE's greedy loop. Eager calls run it as Python; under the ONNX exporter's trace it
    runs as its TorchScript form, so the graph gets one `Loop` with trip count `steps` instead
    of `steps` unrolled copies of the body (same source, see `_greedy_loop`). `unrolled=True`
    traces the copies instead, for the comparison in scripts/bench_scope_loop.py only."""
    if torch.jit.is_tracing() and not unrolled:
        return _scripted_greedy_loop()(sim, add, mul, steps)
    return _greedy_loop(sim, add, mul, steps)


_SCRIPTED: list = []


def _scripted_greedy_loop():
    """torch.jit.script(_greedy_loop), compiled on first export (not at import)."""
    if not _SCRIPTED:
        _SCRIPTED.append(torch.jit.script(_greedy_loop))
    return _SCRIPTED[0]


def _greedy_loop(sim: torch.Tensor, add: torch.Tensor, mul: torch.Tensor, steps: int) -> torch.Tensor:
    """Returns (B, N) float32: the step at
    which each patch was picked (0-based), `steps` for a patch never picked; the greedy picks
    are prefix-consistent, so `result < k` is the selection of any k <= steps.

    score = (gain + add) * mul: `add` = 0, `mul` = saliency for `multi`, `add` = saliency,
    `mul` = 1 for `add` (both exact). The winner is the first maximum (ReduceMax, Equal,
    ReduceMin over positions), never ArgMax/TopK, whose tie order TensorRT does not promise.

    The gain sums over i, i.e. down the columns of S. The loop sums along the rows of S^T
    instead (transposed once, before the loop): the same terms, but a reduction over the
    contiguous axis with the coverage broadcast along it, which runs ~2x faster in ONNX
    Runtime's ReduceSum than the strided column sum (K = 128 on the 7B shape, 2 threads: the
    whole selection ~35 -> ~17 ms; scripts/bench_vision.py)."""
    n = sim.shape[-1]
    sim_t = sim.transpose(1, 2).contiguous()  # sim_t[b, j, i] = sim[b, i, j]
    position = torch.arange(n, dtype=torch.float32, device=sim.device).expand_as(mul)
    nowhere = torch.full_like(position, float(n))
    blocked = torch.full_like(mul, -float("inf"))
    taken = torch.zeros_like(mul)  # constants made once, outside the loop body
    cover = torch.zeros_like(mul)
    free = torch.ones_like(mul)
    rank = torch.zeros_like(mul)
    for _ in range(steps):
        gain = torch.relu(sim_t - cover.unsqueeze(1)).sum(2)
        score = torch.where(free > 0.5, (gain + add) * mul, blocked)
        best = score.amax(-1, keepdim=True)
        pick = torch.where(score == best, position, nowhere).amin(-1, keepdim=True)
        free = torch.where(position == pick, taken, free)
        rank = rank + free
        # a NaN row finds no maximum (pick = n): clamp so the gather stays in range
        row = pick.clamp(max=float(n - 1)).to(torch.int64).unsqueeze(-1).expand(-1, 1, n)
        cover = torch.maximum(cover, torch.gather(sim, 1, row)[:, 0])
    return rank


def scope_terms(cfg: PruneConfig, saliency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(add, mul) of `scope_pick_steps` for the saliency a = cls ** alpha."""
    a = saliency.float()
    if cfg.params["alpha"] != 1.0:
        a = a ** cfg.params["alpha"]
    if cfg.params["combine"] == "add":
        return a, torch.ones_like(a)
    return torch.zeros_like(a), a


def scope_steps(cfg: PruneConfig, saliency: torch.Tensor, features: torch.Tensor, steps: int,
                unrolled: bool = False) -> torch.Tensor:
    add, mul = scope_terms(cfg, saliency)
    return scope_pick_steps(cosine_matrix(features), add, mul, steps, unrolled)


def scope_select(cfg: PruneConfig, pick_steps: torch.Tensor) -> torch.Tensor:
    """(B, K) int64 ascending: the patches picked in the first K steps (section-2 top-K)."""
    return _sorted_indices(pick_steps < cfg.keep, cfg.keep)


def scope(cfg: PruneConfig, saliency: torch.Tensor, features: torch.Tensor, unrolled: bool = False) -> torch.Tensor:
    """Kept indices (B, K) for saliency (B, N) and patch features (B, N, D)."""
    return scope_select(cfg, scope_steps(cfg, saliency, features, cfg.keep, unrolled))


# ---- VisionZip (PRUNING.md 10.2) ------------------------------------------------------------
def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, i]] for (B, S, D) x and (B, M) index -> (B, M, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def visionzip(
    cfg: PruneConfig,
    saliency: torch.Tensor,
    hidden: torch.Tensor,
    keys: torch.Tensor,
    with_assignment: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """saliency (B, N) CLS-row scores, hidden (B, 1+N, D) with the CLS row, keys (B, 1+N, Dk)
    head-mean keys -> tokens (B, 1+Kd+C, D) float32, kept (B, 1+Kd+C) int64 and, if asked,
    assignment (B, N) int64.

    kept says where each row comes from: -1 for the CLS row, the dominant patches ascending,
    then each contextual token's target patch. No scatter and no NonZero: the dominant set is
    a top-K of distinct integer keys, the non-dominant list a top-K over a mask, and targets and
    the others are static positions in that list."""
    n = cfg.num_patches
    kd, c = cfg.dominant_patches, cfg.contextual
    batch = saliency.shape[0]
    if kd > 0:
        dominant_mask = _top_mask(_key(saliency.float()), kd)
        dominant = _sorted_indices(dominant_mask, kd)
    else:
        dominant_mask = torch.zeros_like(saliency, dtype=torch.bool)
        dominant = torch.zeros((batch, 0), dtype=torch.int64)
    rest = _sorted_indices(~dominant_mask, cfg.remaining)
    target_pos = set(cfg.target_positions)
    targets = rest[:, list(cfg.target_positions)]
    others = rest[:, [i for i in range(cfg.remaining) if i not in target_pos]]

    k = keys.float()
    # (B, R-C, C): products summed over the key width (Mul + ReduceSum, like the reference)
    cos = (_unit(_rows(k, others + 1)).unsqueeze(2) * _unit(_rows(k, targets + 1)).unsqueeze(1)).sum(-1)
    slots = torch.arange(c, dtype=torch.float32)
    best = cos.amax(-1, keepdim=True)
    slot = torch.where(cos == best, slots, torch.full_like(cos, float(c))).amin(-1)  # first maximum
    onehot = (slot.unsqueeze(-1) == slots).to(torch.float32)  # (B, R-C, C)
    counts = onehot.sum(1).clamp(min=1.0).unsqueeze(-1)
    h = hidden.float()
    merged = torch.matmul(onehot.transpose(1, 2), _rows(h, others + 1)) / counts
    contextual = _rows(h, targets + 1) + merged

    parts = [h[:, :1]] + ([_rows(h, dominant + 1)] if kd > 0 else []) + [contextual]
    tokens = torch.cat(parts, dim=1)
    cls_mark = torch.full_like(targets[:, :1], -1)
    kept = torch.cat([cls_mark] + ([dominant] if kd > 0 else []) + [targets], dim=1)
    assignment = None
    if with_assignment:
        patch = torch.arange(n).view(1, n, 1)
        as_target = ((targets.unsqueeze(1) == patch).to(torch.float32) * slots).sum(-1)
        as_other = ((others.unsqueeze(1) == patch).to(torch.float32) * slot.unsqueeze(1)).sum(-1)
        assignment = torch.where(dominant_mask, torch.full_like(as_target, -1.0), as_target + as_other)
        assignment = assignment.to(torch.int64)
    return tokens, kept, assignment
