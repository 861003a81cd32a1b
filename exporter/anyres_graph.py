"""The anyres (LLaVA-NeXT) pruned vision graph: CLIP once over every view, one selection per
K_view branch, and each view's own branch chosen by its `view_budget` input.

The views of a batch belong to images of different layouts, so they need different K_view in
one run. Routing each view to its own selection would take data-dependent shapes (NonZero,
scatter) that TensorRT and the plugin avoid; instead every branch selects on every view, its
indices are padded with -1 to the graph's width R, and a Where on `view_budget == K_view` keeps
the right row. A selection costs a small fraction of the CLIP encoder, so the duplicate work is
cheap, and the output shape stays static: (V, R).

SCOPE runs its greedy loop once, for the largest K_view: its picks are prefix-consistent, so
every branch's selection is "picked within the first K_view steps". VisionZip's branches each
build their own (1 + Kd + C) tokens (different dominant sets, targets and merges), padded with
zero rows to R and chosen per view like the indices.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .anyres_plan import AnyresPlan
from .pruning import PruneConfig, vectorized
from .vision_graph import Encoded, PrunedVisionGraph, Selector, gather_rows, standard_selector

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
        # SCOPE and VisionZip select with standard ops only (no plugin form; see README)
        self.selectors: Sequence[Selector] = (
            [] if plan.config.uses_cls_row else [make(b.cfg) for b in plan.branches]
        )

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
        encoded = enc.encode(pixel_values)
        budget = view_budget.to(torch.int64).unsqueeze(-1)
        if self.plan.method == "visionzip":
            return self._visionzip(encoded, budget)
        features, scores = encoded.features, encoded.scores
        patches = features[:, 1:]
        if self.plan.method == "scope":
            cfg = self.plan.config  # the largest K_view: one greedy loop serves every branch
            steps = vectorized.scope_steps(cfg, encoded.cls_scores[:, 1:], patches, cfg.keep)
            choices = [vectorized.scope_select(b.cfg, steps) for b in self.plan.branches]
        else:
            rows = torch.stack([scores[i][:, 1:] for i in enc.score_layers], dim=1)
            similarity = enc.prompt_similarity(patches, text_embeds) if self.plan.uses_prompt else None
            choices = [select(rows, self._similarity(branch.cfg, rows, similarity))
                       for branch, select in zip(self.plan.branches, self.selectors)]
        kept = None
        for branch, chosen in zip(self.plan.branches, choices):
            chosen = pad_indices(chosen, self.plan.rows)
            if kept is None:  # a budget no branch was built for selects nothing
                kept = torch.full_like(chosen, -1)
            kept = torch.where(budget == branch.keep, chosen, kept)
        visual = enc.projector(gather_rows(patches, kept.clamp(min=0)))
        outputs = [visual, kept]
        if enc.debug_scores:
            if self.plan.method == "scope":
                outputs.append(encoded.cls_scores)
            else:
                outputs.append(torch.stack([scores[i] for i in enc.score_layers], dim=1))
        return tuple(outputs)

    def _visionzip(self, encoded: Encoded, budget: torch.Tensor):
        """Every branch merges its own tokens; each view keeps its branch's rows (zero rows
        and -1 indices past its own 1 + Kd + C, none at all for an unknown budget)."""
        enc, width = self.encoder, self.plan.rows
        features = encoded.features
        tokens = kept = assignment = None
        for branch in self.plan.branches:
            rows, chosen, assigned = vectorized.visionzip(
                branch.cfg, encoded.cls_scores[:, 1:], features, encoded.keys, with_assignment=enc.debug_scores
            )
            missing = width - rows.shape[1]
            if missing:
                rows = torch.cat([rows, torch.zeros_like(rows[:, :1]).expand(-1, missing, -1)], dim=1)
            chosen = pad_indices(chosen, width)
            if kept is None:
                tokens, kept = torch.zeros_like(rows), torch.full_like(chosen, -1)
                if assigned is not None:
                    assignment = torch.full_like(assigned, -1)
            match = budget == branch.keep
            tokens = torch.where(match.unsqueeze(-1), rows, tokens)
            kept = torch.where(match, chosen, kept)
            if assigned is not None:
                assignment = torch.where(match, assigned, assignment)
        outputs = [enc.projector(tokens.to(features.dtype)), kept]
        if enc.debug_scores:
            outputs += [encoded.cls_scores, assignment]
        return tuple(outputs)
