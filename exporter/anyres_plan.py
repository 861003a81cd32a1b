"""Per-view budgets of a LLaVA-NeXT (anyres) vision engine (PRUNING.md section 6).

`--keep K` is a budget per image, but each view (base + crops) is pruned on its own grid with
K_view = floor(K / n_views), and n_views depends on the image's layout. One engine serves every
layout of the checkpoint, so the graph holds one selection *branch* per distinct K_view and each
view picks its branch at run time through its `view_budget` input. This module decides the
branches, validates them with the user's K and layout in the message (a bare "keep must be ..."
about a K_view the user never typed would be a riddle), and writes the `vision.anyres` section
of config.json that the runtime reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.anyres import Layout, layouts, view_budget
from runtime.contract import AnyresSection, LayoutSpec, ViewBudget

from .pruning import PruneConfig, make_config

VIEW_RULE = "K_view = floor(K / n_views)"
ORDER = ("base view first (sorted), then the crops' tokens in raster order of the stitched "
         "(rows*24) x (cols*24) grid")
# VisionZip's LLaVA-NeXT order (dvlab visionzip/llava_arch.py, PRUNING.md 10.4); each view's
# rows are [CLS, dominant ascending, contextual] and kept_indices says which is which.
VISIONZIP_ORDER = ("base view [CLS, dominant (ascending), contextual]; then the crops' dominant tokens in "
                   "raster order of the stitched (rows*24) x (cols*24) grid; then the crops' CLS tokens; "
                   "then the crops' contextual tokens, crop by crop")
VISIONZIP_VIEW_RULE = VIEW_RULE + ", split per view as (K_view - C, C) with C = contextual or the rule of K_view"


def merge_rule(method: str) -> str:
    """`vision.anyres.merge`: how the runtime puts an image's views together."""
    if method == "none":
        return "spatial_unpad"
    return "visionzip" if method == "visionzip" else "spatial"


@dataclass(frozen=True)
class Branch:
    """One selection of the graph: every view count in `views` has the same K_view."""

    views: tuple[int, ...]
    cfg: PruneConfig  # cfg.keep = K_view

    @property
    def keep(self) -> int:
        return int(self.cfg.keep)

    @property
    def output(self) -> int:
        """Tokens this branch keeps per view: K_view, plus HiPrune++'s t of that K_view."""
        return int(self.cfg.output_count)


@dataclass(frozen=True)
class AnyresPlan:
    method: str
    keep: int | None  # K per image; None for method none
    layouts: tuple[Layout, ...]
    view_size: int
    grid: tuple[int, int]
    config: PruneConfig  # what the graph is described by: the largest branch, or `none`
    branches: tuple[Branch, ...]  # ascending view count (descending K_view); () for none

    @property
    def pruned(self) -> bool:
        return self.method != "none"

    @property
    def max_views(self) -> int:
        return max(layout.views for layout in self.layouts)

    @property
    def rows(self) -> int:
        """R: the output width of the graph (the widest branch; 576 for none)."""
        if not self.pruned:
            return self.config.num_patches
        return max(b.output for b in self.branches)

    @property
    def uses_prompt(self) -> bool:
        """Whether the graph takes `text_embeds`: some branch adds HiPrune++ tokens (t grows with
        K_view, so small budgets may add none at all)."""
        return any(b.cfg.uses_prompt for b in self.branches)

    def branch_for(self, views: int) -> Branch:
        for branch in self.branches:
            if views in branch.views:
                return branch
        raise KeyError(f"no branch serves {views}-view images")

    def tokens_per_image(self, layout: Layout) -> int:
        """Visual tokens one image of `layout` gives the language model: n_views * output for a
        pruned engine; for none the stock LLaVA-NeXT bound before unpadding (base view, then
        the stitched crop grid with a newline token closing every row)."""
        gh, gw = self.grid
        if self.pruned:
            return layout.views * self.branch_for(layout.views).output
        return gh * gw + (layout.rows * gh) * (layout.cols * gw + 1)

    @property
    def max_tokens_per_image(self) -> int:
        return max(self.tokens_per_image(layout) for layout in self.layouts)

    @staticmethod
    @staticmethod
    def _budget(branch: Branch) -> ViewBudget:
        if branch.cfg.method == "visionzip":  # rows per view: 1 CLS + dominant + contextual
            return ViewBudget(list(branch.views), branch.keep, branch.output, branch.cfg.dominant_patches,
                              branch.cfg.contextual)
        return ViewBudget(list(branch.views), branch.keep, branch.output)

    def section(self, image_newline: str | None) -> AnyresSection:
        """The `vision.anyres` section of config.json."""
        return AnyresSection(
            image_grid_pinpoints=[list(layout.pinpoint) for layout in self.layouts],
            view_size=self.view_size,
            patch_grid=list(self.grid),
            layouts=[LayoutSpec(list(layout.pinpoint), layout.rows, layout.cols, layout.views)
                     for layout in self.layouts],
            max_views=self.max_views,
            keep_per_image=self.keep,
            view_rule=VISIONZIP_VIEW_RULE if self.method == "visionzip" else VIEW_RULE,
            view_budgets=[self._budget(b) for b in self.branches],
            merge=merge_rule(self.method),
            image_newline=image_newline,
            order=VISIONZIP_ORDER if self.method == "visionzip" else ORDER,
            max_tokens_per_image=self.max_tokens_per_image,
        )


def _name(layout: Layout) -> str:
    return f"{layout.pinpoint[0]}x{layout.pinpoint[1]}"


def plan_anyres(method: str, keep: int | None, config: Any, params: dict[str, Any] | None = None) -> AnyresPlan:
    """Branches for `method` at K = `keep` per image over the layouts of an anyres HF config.
    Raises ValueError with a one-line message naming K, the layout / view count and K_view."""
    params = dict(params or {})
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    grid = (side, side)
    num_layers = vision.num_hidden_layers
    shapes = tuple(layouts(config))
    if not shapes:
        raise ValueError("the anyres model lists no image_grid_pinpoints")

    if method == "none":
        cfg = make_config("none", keep, grid=grid, num_layers=num_layers, **params)
        return AnyresPlan("none", None, shapes, vision.image_size, grid, cfg, ())
    if isinstance(keep, bool) or not isinstance(keep, int):
        raise ValueError(f"keep (visual tokens per image) must be an integer for method {method!r}, got {keep!r}")

    widest = max(shapes, key=lambda layout: layout.views)
    if keep < widest.views:
        raise ValueError(
            f"--keep {keep} is smaller than the {widest.views} views of the {_name(widest)} layout "
            f"({widest.rows}x{widest.cols} crops + base): with {VIEW_RULE} every view needs at least "
            f"one token, so use --keep {widest.views} or more"
        )
    narrowest = min(shapes, key=lambda layout: layout.views)
    patches = grid[0] * grid[1]
    if view_budget(keep, narrowest.views) > patches:
        raise ValueError(
            f"--keep {keep} gives {narrowest.views}-view images (layout {_name(narrowest)}) K_view = "
            f"floor({keep} / {narrowest.views}) = {view_budget(keep, narrowest.views)} tokens per view, "
            f"more than the {patches} patches of a view; use --keep {(patches + 1) * narrowest.views - 1} or less"
        )

    by_budget: dict[int, list[int]] = {}
    for n in sorted({layout.views for layout in shapes}):
        by_budget.setdefault(view_budget(keep, n), []).append(n)
    branches = []
    # Most views (smallest K_view) first: the tightest budget is the one worth reporting.
    for k_view, views in sorted(by_budget.items()):
        try:
            cfg = make_config(method, k_view, grid=grid, num_layers=num_layers, **params)
        except ValueError as exc:
            if "keep" not in str(exc):  # a parameter problem, not a budget problem
                raise
            names = ", ".join(_name(layout) for layout in shapes if layout.views in views)
            counts = "/".join(str(n) for n in views)
            raise ValueError(
                f"--keep {keep} gives {counts}-view images (layouts {names}) K_view = floor({keep} / "
                f"{views[0]}) = {k_view} tokens per view, which {method} cannot use: {exc}"
            ) from None
        branches.append(Branch(tuple(views), cfg))
    branches.sort(key=lambda b: b.views[0])
    return AnyresPlan(method, keep, shapes, vision.image_size, grid, branches[0].cfg, tuple(branches))
