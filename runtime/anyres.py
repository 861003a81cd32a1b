"""LLaVA-NeXT ("anyres"): per-view vision outputs -> each image's visual token sequence.

The vision engine treats every view (the base view and the high-resolution crops) as an image
of its own; the language model sees one token sequence per image. This module is the one place
that puts the views back together, for the two merges an engine directory can declare in
`vision.anyres.merge`:

- "spatial" (pruned methods, PRUNING.md 6): the base view's kept tokens, then the kept tokens of
  all crops in raster order of the stitched (rows*24) x (cols*24) grid. No unpadding and no
  newline tokens: this is what the HiPrune code does after pruning, and it keeps the count of an
  image fixed at n_views * output(K_view).
- "spatial_unpad" (method none): the stock LLaVA-NeXT packing (transformers'
  `LlavaNextModel.pack_image_features`): stitch the crops, cut the padding the processor added
  around the image (from the original (h, w)), append `image_newline` after every row, base
  view first. Re-implemented here in numpy so the ONNX/TensorRT backends need no torch model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .contract import AnyresSection
from .contract.sections import MERGES
from .errors import EngineDirError, UserError


@dataclass(frozen=True)
class Layout:
    """How an image is cut: the pinpoint (height, width) in pixels, n_h x n_w crops."""

    pinpoint: tuple[int, int]
    rows: int  # n_h crops
    cols: int  # n_w crops

    @property
    def views(self) -> int:
        return 1 + self.rows * self.cols


def layout_for(points: Sequence[Sequence[int]], view_size: int, image_size: Sequence[int]) -> Layout:
    """The layout the processor uses for an image of (height, width) pixels, from the listed
    pinpoints (the one place that maps an image size to its layout; the exporter asks here too)."""
    from .images import best_resolution

    h, w = best_resolution((int(image_size[0]), int(image_size[1])), [(int(a), int(b)) for a, b in points])
    return Layout((int(h), int(w)), int(h) // view_size, int(w) // view_size)


@dataclass(frozen=True)
class AnyresSpec:
    """`vision.anyres` of config.json in the form the runtime computes with."""

    pinpoints: tuple[tuple[int, int], ...]
    view_size: int
    grid: tuple[int, int]
    merge: str
    budgets: dict[int, tuple[int, int]]  # views per image -> (K_view, output tokens per view)
    max_tokens: int
    newline_file: str | None
    dominant: dict[int, int] = field(default_factory=dict)  # VisionZip: views per image -> Kd per view

    @classmethod
    def from_section(cls, section: AnyresSection) -> "AnyresSpec":
        budgets = {int(v): (b.keep, b.output) for b in section.view_budgets for v in b.views}
        dominant = {int(v): b.dominant_patches for b in section.view_budgets for v in b.views
                    if b.dominant_patches is not None}
        if section.merge == "visionzip" and len(dominant) != len(budgets):
            raise EngineDirError("config.json vision.anyres has VisionZip branches without dominant_patches: rebuild it")
        if section.merge not in MERGES:
            raise EngineDirError(f"config.json vision.anyres.merge is {section.merge!r}; this runtime knows "
                                 f"{', '.join(MERGES)}")
        return cls(tuple((int(h), int(w)) for h, w in section.image_grid_pinpoints), section.view_size,
                   (int(section.patch_grid[0]), int(section.patch_grid[1])), section.merge, budgets,
                   section.max_tokens_per_image, section.image_newline, dominant)

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def rows_per_view(self) -> int:
        """Rows of the engine's per-view outputs: the largest output count of any branch."""
        if self.merge == "spatial_unpad":
            return self.patches
        return max(out for _, out in self.budgets.values())

    def layout(self, image_size: Sequence[int]) -> Layout:
        """The layout the processor chose for an image of (height, width) pixels."""
        return layout_for(self.pinpoints, self.view_size, image_size)

    def budget(self, views: int) -> tuple[int, int]:
        """(K_view, output tokens per view) for an image of `views` views."""
        if views not in self.budgets:
            raise UserError(f"the engine has no branch for images of {views} views "
                            f"(built for {', '.join(map(str, sorted(self.budgets)))})")
        return self.budgets[views]

    def token_count(self, layout: Layout, image_size: Sequence[int]) -> int:
        """Visual tokens the image contributes to the prompt (known before the vision engine runs,
        so over-long prompts are refused before any compute)."""
        if self.merge in ("spatial", "visionzip"):
            return layout.views * self.budget(layout.views)[1]
        top, bottom, left, right = unpad_bounds(layout.rows * self.grid[0], layout.cols * self.grid[1], image_size)
        newline = 1 if self.newline_file else 0
        return self.patches + (bottom - top) * (right - left + newline)


def stitched_keys(layout: Layout, grid: tuple[int, int], crop: int, patches: np.ndarray) -> np.ndarray:
    """Raster position in the stitched (rows*gh) x (cols*gw) grid of patches p of crop i*cols + j:
    (i*gh + r) * (cols*gw) + (j*gw + c) with p = gw*r + c."""
    gh, gw = grid
    i, j = divmod(crop, layout.cols)
    r, c = np.divmod(np.asarray(patches, np.int64), gw)
    return (i * gh + r) * (layout.cols * gw) + (j * gw + c)


def _valid_rows(kept: np.ndarray, count: int, view: int) -> np.ndarray:
    rows = kept[:count]
    if kept.shape[0] < count or (rows < 0).any() or (kept[count:] >= 0).any():
        got = int((kept >= 0).sum())
        raise UserError(f"the vision engine kept {got} tokens of view {view}, its config.json says {count}: "
                        "the engine and config.json do not belong together; rebuild the engine directory")
    return rows


def arrange_spatial(features: np.ndarray, kept: np.ndarray, layout: Layout, output: int,
                    grid: tuple[int, int]) -> tuple[np.ndarray, list[list[int]]]:
    """Pruned views of one image -> ((views*output, H) features, kept patch indices per view).

    features (n, R, H) and kept (n, R) are the engine rows of this image's views, base first;
    row j of a view is valid iff j < output."""
    if features.shape[0] != layout.views or kept.shape[0] != layout.views:
        raise UserError(f"got {features.shape[0]} views for an image whose layout has {layout.views}")
    valid = [_valid_rows(kept[v], output, v) for v in range(layout.views)]
    crop_keys = np.concatenate([stitched_keys(layout, grid, v - 1, valid[v]) for v in range(1, layout.views)])
    crop_rows = np.concatenate([features[v, :output] for v in range(1, layout.views)])
    order = np.argsort(crop_keys, kind="stable")  # keys are distinct: each stitched cell is one crop patch
    merged = np.concatenate([features[0, :output], crop_rows[order]])
    return merged, [[int(i) for i in rows] for rows in valid]


def unpad_bounds(height: int, width: int, image_size: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the stitched grid that shows the image, not the padding the
    processor added to reach the pinpoint's aspect ratio. The arithmetic (float ratios, rounding
    to 7 digits, symmetric floor padding) is the stock rule, so the counts agree exactly."""
    orig_h, orig_w = int(image_size[0]), int(image_size[1])
    if orig_w / orig_h > width / height:
        scale = width / orig_w
        pad = (height - int(round(orig_h * scale, 7))) // 2
        return pad, height - pad, 0, width
    scale = height / orig_h
    pad = (width - int(round(orig_w * scale, 7))) // 2
    return 0, height, pad, width - pad


def pack_unpadded(features: np.ndarray, layout: Layout, grid: tuple[int, int], image_size: Sequence[int],
                  newline: np.ndarray | None) -> np.ndarray:
    """All views of one image (n, gh*gw, H), base first -> the stock LLaVA-NeXT sequence
    (base tokens, then each kept row of the stitched, unpadded grid followed by `newline`)."""
    gh, gw = grid
    n, patches, hidden = features.shape
    if n != layout.views or patches != gh * gw:
        raise UserError(f"expected {layout.views} views of {gh * gw} tokens, got {n} of {patches}")
    stitched = (features[1:].reshape(layout.rows, layout.cols, gh, gw, hidden)
                .transpose(0, 2, 1, 3, 4).reshape(layout.rows * gh, layout.cols * gw, hidden))
    top, bottom, left, right = unpad_bounds(layout.rows * gh, layout.cols * gw, image_size)
    grid_rows = stitched[top:bottom, left:right]
    if newline is not None:
        column = np.broadcast_to(np.asarray(newline, features.dtype), (grid_rows.shape[0], 1, hidden))
        grid_rows = np.concatenate([grid_rows, column], axis=1)
    return np.concatenate([features[0], grid_rows.reshape(-1, hidden)])


def arrange_visionzip(features: np.ndarray, kept: np.ndarray, layout: Layout, output: int, dominant: int,
                      grid: tuple[int, int]) -> tuple[np.ndarray, list[list[int]]]:
    """VisionZip views of one image -> tokens in the released order (PRUNING.md 10.4): the base
    view's rows as they are ([CLS, dominant, contextual]); the crops' dominant tokens in raster
    order of the stitched grid; the crops' CLS rows; the crops' contextual tokens, crop by crop.
    A view's rows are [CLS (kept -1), Kd dominant patches, C contextual (kept = its target)]."""
    if features.shape[0] != layout.views or kept.shape[0] != layout.views:
        raise UserError(f"got {features.shape[0]} views for an image whose layout has {layout.views}")
    for v in range(layout.views):
        row = kept[v]
        if row.shape[0] < output or row[0] != -1 or (row[1:output] < 0).any() or (row[output:] >= 0).any():
            raise EngineDirError(f"the vision engine's rows of view {v} are not [CLS, {dominant} dominant, "
                                 f"{output - 1 - dominant} contextual] as config.json says: the engine and "
                                 "config.json do not belong together; rebuild the engine directory")
    crops = range(1, layout.views)
    keys = np.concatenate([stitched_keys(layout, grid, v - 1, kept[v, 1:1 + dominant]) for v in crops])
    rows = np.concatenate([features[v, 1:1 + dominant] for v in crops])
    order = np.argsort(keys, kind="stable")
    merged = np.concatenate([features[0, :output], rows[order], features[1:, 0],
                             *[features[v, 1 + dominant:output] for v in crops]])
    return merged, [[int(i) for i in kept[v, :output]] for v in range(layout.views)]


def arrange(spec: AnyresSpec, features: np.ndarray, kept: np.ndarray, layout: Layout, image_size: Sequence[int],
            newline: np.ndarray | None) -> tuple[np.ndarray, list[list[int]]]:
    """One image's engine rows -> (its visual tokens, kept patch indices per view)."""
    if spec.merge == "spatial":
        return arrange_spatial(features, kept, layout, spec.budget(layout.views)[1], spec.grid)
    if spec.merge == "visionzip":
        return arrange_visionzip(features, kept, layout, spec.budget(layout.views)[1], spec.dominant[layout.views],
                                 spec.grid)
    every = [list(range(spec.patches)) for _ in range(layout.views)]
    return pack_unpadded(features[:, : spec.patches], layout, spec.grid, image_size, newline), every
