"""LLaVA-NeXT "anyres" layout facts of an HF config, for the exporter.

An image becomes a base view plus n_h x n_w crops of the checkpoint's `image_grid_pinpoints`
(the processor picks the pinpoint with the least wasted resolution; any image maps to a listed
one). The exporter needs every possible view count to size the per-view budgets; the runtime
needs each image's own layout. The mapping itself (`Layout`, `layout_for`) lives in the runtime,
which the device installs without this package, so the two can never disagree.
"""
from __future__ import annotations

from typing import Any, Sequence

from runtime.anyres import Layout, layout_for

__all__ = ["Layout", "image_layout", "is_anyres", "layout_for", "layouts", "pinpoints", "view_budget", "view_counts"]


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


def image_layout(config: Any, image_size: Sequence[int]) -> Layout:
    return layout_for(pinpoints(config), config.vision_config.image_size, image_size)
