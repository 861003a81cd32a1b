"""LLaVA-NeXT "anyres" layout facts shared by the exporter and the runtime.

An image becomes a base view plus n_h x n_w crops of the checkpoint's `image_grid_pinpoints`
(the processor picks the pinpoint with the least wasted resolution; any image maps to a listed
one). The exporter needs every possible view count to size the per-view budgets; the runtime
needs each image's own layout. Both ask here so the two can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Layout:
    pinpoint: tuple[int, int]  # (height, width) in pixels
    rows: int  # n_h crops
    cols: int  # n_w crops

    @property
    def views(self) -> int:
        return 1 + self.rows * self.cols


def is_anyres(config: Any) -> bool:
    return getattr(config, "model_type", None) == "llava_next" or bool(getattr(config, "image_grid_pinpoints", None))


def pinpoints(config: Any) -> list[tuple[int, int]]:
    points = getattr(config, "image_grid_pinpoints", None) or []
    return [(int(h), int(w)) for h, w in points]


def layouts(config: Any) -> list[Layout]:
    """Every layout the checkpoint lists, in its order."""
    view = config.vision_config.image_size
    return [Layout((h, w), h // view, w // view) for h, w in pinpoints(config)]


def view_counts(config: Any) -> list[int]:
    """Distinct numbers of views per image, ascending (LLaVA-NeXT-7B: 3, 4, 5)."""
    return sorted({layout.views for layout in layouts(config)})


def view_budget(keep: int, views: int) -> int:
    """K_view = floor(K / n_views) (PRUNING.md section 6, HiPrune's rule)."""
    return keep // views


def layout_for(points: Sequence[Sequence[int]], view_size: int, image_size: Sequence[int]) -> Layout:
    """The layout the processor uses for an image of (height, width) pixels, from the listed
    pinpoints (the runtime has them from config.json, not from an HF config)."""
    from transformers.image_processing_utils import select_best_resolution

    h, w = select_best_resolution([int(image_size[0]), int(image_size[1])], [[int(a), int(b)] for a, b in points])
    return Layout((int(h), int(w)), int(h) // view_size, int(w) // view_size)


def image_layout(config: Any, image_size: Sequence[int]) -> Layout:
    return layout_for(pinpoints(config), config.vision_config.image_size, image_size)
