"""The anyres (LLaVA-NeXT) pruned vision graph: CLIP once over every view, one selection per
K_view branch, and each view's own branch chosen by its `view_budget` input.

The views of a batch belong to images of different layouts, so they need different K_view in
one run. Routing each view to its own selection would take data-dependent shapes (NonZero,
scatter) that TensorRT and the plugin avoid; instead every branch selects on every view, its
indices are padded with -1 to the graph's width R, and a Where on `view_budget == K_view` keeps
the right row. A selection costs a small fraction of the CLIP encoder, so the duplicate work is
cheap, and the output shape stays static: (V, R).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .anyres_plan import AnyresPlan
from .pruning import PruneConfig
from .vision_graph import PrunedVisionGraph, Selector, standard_selector

SelectorFactory = Callable[[PruneConfig], Selector]


def pad_indices(kept: torch.Tensor, width: int) -> torch.Tensor:
    """(V, k) -> (V, width): the kept indices followed by -1 (no token)."""
    missing = width - kept.shape[-1]
    if missing == 0:
        return kept
    filler = torch.full_like(kept[:, :1], -1).expand(-1, missing)
    return torch.cat([kept, filler], dim=-1)


class AnyresVisionGraph(nn.Module):
    """forward(pixel_values (V, 3, S, S), view_budget (V,) int64[, text_embeds (V, D)]) ->
    visual_features (V, R, H), kept_indices (V, R) int64 with -1 past a view's own count."""

    def __init__(self, encoder: PrunedVisionGraph, plan: AnyresPlan,
                 selector_factory: SelectorFactory | None = None):
        super().__init__()
        if not plan.pruned:
            raise ValueError("method none has no branches: export the per-view graph (PrunedVisionGraph)")
        layers = {b.cfg.layers for b in plan.branches}
        if len(layers) != 1:  # the scores are computed once for all branches
            raise ValueError(f"every branch must score the same layers, got {sorted(layers)}")
        self.encoder = encoder
        self.plan = plan
        make = selector_factory or standard_selector
        self.selectors: Sequence[Selector] = [make(b.cfg) for b in plan.branches]

    @staticmethod
    def _similarity(cfg: PruneConfig, rows: torch.Tensor, similarity: torch.Tensor | None):
        """HiPrune++ branches always get one: the plugin node of a hiprune++ branch takes the
        similarity input even where t = 0 at its K_view (small budgets; it adds nothing then),
        and the standard ops ignore it there. Without a prompt input, zeros stand in."""
        if cfg.method != "hiprune++":
            return None
        return similarity if similarity is not None else torch.zeros_like(rows[:, 0])

    def forward(self, pixel_values: torch.Tensor, view_budget: torch.Tensor,
                text_embeds: torch.Tensor | None = None):
        enc = self.encoder
        features, scores = enc.encode(pixel_values)
        patches = features[:, 1:]
        rows = torch.stack([scores[i][:, 1:] for i in enc.score_layers], dim=1)
        similarity = enc.prompt_similarity(patches, text_embeds) if self.plan.uses_prompt else None
        budget = view_budget.to(torch.int64).unsqueeze(-1)
        kept = None
        for branch, select in zip(self.plan.branches, self.selectors):
            chosen = pad_indices(select(rows, self._similarity(branch.cfg, rows, similarity)), self.plan.rows)
            if kept is None:  # a budget no branch was built for selects nothing
                kept = torch.full_like(chosen, -1)
            kept = torch.where(budget == branch.keep, chosen, kept)
        index = kept.clamp(min=0).unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        visual = enc.projector(torch.gather(patches, 1, index))
        outputs = [visual, kept]
        if enc.debug_scores:
            outputs.append(torch.stack([scores[i] for i in enc.score_layers], dim=1))
        return tuple(outputs)
