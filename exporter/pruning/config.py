"""Validated pruning settings shared by the reference, the vectorised form and the exporter.

Every implementation reads its constants (budgets, window size, anchor count, layers) from a
`PruneConfig`, so the rules that turn user parameters into numbers exist exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METHODS = ("none", "hivtp", "hiprune", "hiprune++", "scope", "visionzip")
# Methods ranked by the CLS query row of the feature layer's attention (PRUNING.md 8), not by
# the column-mean layer scores of `PruneConfig.layers`.
CLS_ROW_METHODS = ("scope", "visionzip")

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "none": {},
    "hivtp": {"regions": 2, "global_fraction": 0.5, "layers": (6, 7, 8)},
    "hiprune": {"alpha": 0.1, "object_layer": 9, "deep_layer": -2, "buffer_edges": "clamp"},
    "hiprune++": {
        "alpha": 0.1,
        "object_layer": 9,
        "deep_layer": -2,
        "buffer_edges": "clamp",
        "beta": 0.1,
    },
    "scope": {"alpha": 1.0, "combine": "multi"},
    "visionzip": {"contextual": None},  # None: the released table, else the 10.2 rule
}

# Contextual tokens per total budget in the released settings (kinredon/SCOPE builder.py;
# dvlab's README: 54 + 10 = 64); other totals follow `default_contextual`.
VISIONZIP_CONTEXTUAL = {8: 2, 16: 4, 32: 6, 48: 8, 64: 10, 128: 20, 160: 25, 192: 30, 320: 50, 640: 100}
SCOPE_COMBINE = ("multi", "add")

# Released HIVTP constants (keep=None): 25 % of every region, 2 x 2 windows.
RELEASED_HIVTP_REGION_FRACTION = 0.25
RELEASED_HIVTP_WINDOW = 2


def round_half_even(x: float) -> int:
    """Python's round() is banker's rounding, which is what the released HiPrune code uses."""
    return int(round(x))


def default_contextual(keep: int) -> int:
    """VisionZip's C for a total of `keep` tokens: the released table, else
    max(1, round_half_even(K * 10 / 64)) (this project's rule; PRUNING.md 10.2)."""
    if keep in VISIONZIP_CONTEXTUAL:
        return VISIONZIP_CONTEXTUAL[keep]
    return max(1, round_half_even(keep * 10 / 64))


@dataclass(frozen=True)
class PruneConfig:
    method: str
    keep: int | None  # K from HiPrune / budget; None = released HIVTP (variable count)
    grid: tuple[int, int]
    num_layers: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    # ---- derived constants -------------------------------------------------------------
    @property
    def layers(self) -> tuple[int, ...]:
        """0-based encoder-layer indices whose scores the method reads, in the order used."""
        if self.method == "hivtp":
            return tuple(int(i) for i in self.params["layers"])
        if self.method in ("hiprune", "hiprune++"):
            return (self.object_layer_index, self.deep_layer_index)
        return ()

    @property
    def object_layer_index(self) -> int:
        return int(self.params["object_layer"]) - 1

    @property
    def deep_layer_index(self) -> int:
        return int(self.params["deep_layer"]) % self.num_layers

    @property
    def num_anchors(self) -> int:
        return round_half_even(self.keep * self.params["alpha"] / 5)

    @property
    def num_extra(self) -> int:
        """HiPrune++'s prompt-aware extra tokens t."""
        if self.method != "hiprune++":
            return 0
        return round_half_even(self.keep * self.params["beta"] / 5)

    @property
    def uses_prompt(self) -> bool:
        """Whether the graph takes the prompt's text embedding (HiPrune++ with t > 0)."""
        return self.num_extra > 0

    @property
    def output_count(self) -> int | None:
        if self.method == "none":
            return self.num_patches
        if self.keep is None:
            return None
        return self.keep + self.num_extra

    # ---- SCOPE and VisionZip (PRUNING.md 8-10) -------------------------------------------------
    @property
    def uses_cls_row(self) -> bool:
        """Ranks patches by the CLS query row of the feature layer (`cls_scores`)."""
        return self.method in CLS_ROW_METHODS

    @property
    def cls_layer_index(self) -> int:
        """0-based encoder layer whose CLS row both methods read: `attentions[-2]`, the layer
        whose output LLaVA uses (23 of 24 for CLIP-L)."""
        return self.num_layers - 2

    @property
    def contextual(self) -> int:
        """VisionZip's C: merged contextual tokens."""
        c = self.params.get("contextual")
        return default_contextual(self.keep) if c is None else int(c)

    @property
    def dominant(self) -> int:
        """VisionZip's D, counting the CLS token like the authors' `dominant` argument."""
        return self.keep - self.contextual

    @property
    def dominant_patches(self) -> int:
        """Kd = D - 1 patches kept as they are (CLS is always kept)."""
        return self.dominant - 1

    @property
    def remaining(self) -> int:
        """R: the non-dominant patches, the list the contextual targets are taken from."""
        return self.num_patches - self.dominant_patches

    @property
    def target_step(self) -> int:
        """Stride over the ascending non-dominant list: max(1, R // C) (released rule)."""
        return max(1, self.remaining // self.contextual)

    @property
    def target_positions(self) -> tuple[int, ...]:
        """Positions in the non-dominant list of the C targets: 0, step, ..., (C-1)*step."""
        return tuple(i * self.target_step for i in range(self.contextual))

    @property
    def region_shape(self) -> tuple[int, int]:
        r = self.params["regions"]
        return self.grid[0] // r, self.grid[1] // r

    @property
    def per_region_budget(self) -> int:
        r = self.params["regions"]
        if self.keep is None:
            rh, rw = self.region_shape
            return int(rh * rw * RELEASED_HIVTP_REGION_FRACTION)
        return int(self.params["global_fraction"] * self.keep / (r * r))

    @property
    def global_budget(self) -> int:
        return self.params["regions"] ** 2 * self.per_region_budget

    @property
    def window(self) -> int:
        """HIVTP local window side: the largest common divisor of the region sides that still
        yields at least K_l windows over the whole grid (PRUNING.md 3.3)."""
        if self.keep is None:
            return RELEASED_HIVTP_WINDOW
        local = self.keep - self.global_budget
        rh, rw = self.region_shape
        gh, gw = self.grid
        for w in range(min(rh, rw), 0, -1):
            if rh % w == 0 and rw % w == 0 and (gh // w) * (gw // w) >= local:
                return w
        return 1

    def describe(self):
        """config.json's `vision.pruning` record: every parameter plus the derived constants."""
        from runtime.contract import PruningSection

        return PruningSection(method=self.method, keep=self.keep, grid=list(self.grid), num_layers=self.num_layers,
                              params={k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params.items()},
                              score_layers=list(self.layers), output_tokens=self.output_count, derived=self.derived())

    def derived(self) -> dict[str, Any]:
        """The method's constants computed from its parameters (what the graph and plugin use)."""
        out: dict[str, Any] = {}
        if self.method == "hivtp" and self.keep is not None:
            out = {
                "per_region_budget": self.per_region_budget,
                "local_budget": self.keep - self.global_budget,
                "window": self.window,
            }
        if self.method in ("hiprune", "hiprune++"):
            out = {"anchors": self.num_anchors, "extra_tokens": self.num_extra}
        if self.method == "scope":
            out = {"cls_layer": self.cls_layer_index, "greedy_steps": self.keep}
        if self.method == "visionzip":
            out = {
                "cls_layer": self.cls_layer_index,
                "dominant": self.dominant,
                "dominant_patches": self.dominant_patches,
                "contextual": self.contextual,
                "remaining": self.remaining,
                "target_step": self.target_step,
                "rows": ["cls", f"dominant x{self.dominant_patches}", f"contextual x{self.contextual}"],
            }
        return out


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _check_float(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def make_config(
    method: str,
    keep: int | None,
    *,
    grid: tuple[int, int] = (24, 24),
    num_layers: int = 24,
    **params: Any,
) -> PruneConfig:
    """Validate user arguments once; raises ValueError naming the argument and its range."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 2
        or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
    ):
        raise ValueError(f"grid must be two positive integers (rows, cols), got {grid!r}")
    grid = (int(grid[0]), int(grid[1]))
    n = grid[0] * grid[1]
    _check_int("num_layers", num_layers, 1, 1 << 16)

    unknown = set(params) - set(DEFAULT_PARAMS[method])
    if unknown:
        allowed = ", ".join(DEFAULT_PARAMS[method]) or "none"
        raise ValueError(
            f"unknown parameter(s) {', '.join(sorted(unknown))} for method {method!r} "
            f"(allowed: {allowed})"
        )
    p = {**DEFAULT_PARAMS[method], **params}

    if method == "none":
        if keep is not None and keep != n:
            raise ValueError(f"keep must be None or {n} (all patches) for method 'none', got {keep!r}")
        return PruneConfig(method, n, grid, num_layers, p)

    if method in CLS_ROW_METHODS:
        return _cls_row_config(method, keep, grid, num_layers, p)

    if keep is None:
        if method != "hivtp":
            raise ValueError(f"keep must be an integer in 1..{n} for method {method!r}, got None")
    else:
        _check_int("keep", keep, 1, n)

    if method == "hivtp":
        r = _check_int("regions", p["regions"], 1, min(grid))
        if grid[0] % r or grid[1] % r:
            raise ValueError(f"regions must divide the grid {grid[0]}x{grid[1]}, got {r}")
        g = _check_float("global_fraction", p["global_fraction"], 0.0, 1.0)
        layers = p["layers"]
        if isinstance(layers, (int, str)) or not layers:
            raise ValueError(f"layers must be a non-empty list of layer indices such as [6,7,8], got {layers!r}")
        p["layers"] = tuple(_check_int("layers", i, 0, num_layers - 1) for i in layers)
        if keep is None:
            rh, rw = grid[0] // r, grid[1] // r
            if rh % RELEASED_HIVTP_WINDOW or rw % RELEASED_HIVTP_WINDOW:
                raise ValueError(
                    f"regions: the released HIVTP rule (keep=None) needs even region sides, got {rh}x{rw}"
                )
        elif g > 0 and keep < r * r:
            raise ValueError(
                f"keep must be at least regions^2 = {r * r} for hivtp with global_fraction > 0, got {keep}"
            )
    else:
        _check_float("alpha", p["alpha"], 0.0, 1.0)
        _check_int("object_layer", p["object_layer"], 1, num_layers)
        _check_int("deep_layer", p["deep_layer"], -num_layers, num_layers - 1)
        if p["buffer_edges"] not in ("clamp", "discard"):
            raise ValueError(f"buffer_edges must be 'clamp' or 'discard', got {p['buffer_edges']!r}")
        cfg = PruneConfig(method, keep, grid, num_layers, p)
        if 5 * cfg.num_anchors > keep:
            raise ValueError(
                f"alpha={p['alpha']} gives {cfg.num_anchors} anchors whose buffers (up to "
                f"{5 * cfg.num_anchors} tokens) do not fit in keep={keep}; lower alpha or raise keep"
            )
        if method == "hiprune++":
            _check_float("beta", p["beta"], 0.0, 1.0)
            if cfg.output_count > n:
                raise ValueError(
                    f"beta={p['beta']} adds {cfg.num_extra} tokens to keep={keep}, more than the {n} patches"
                )
        return cfg
    return PruneConfig(method, keep, grid, num_layers, p)


def _cls_row_config(method: str, keep: Any, grid: tuple[int, int], num_layers: int, p: dict) -> PruneConfig:
    n = grid[0] * grid[1]
    if num_layers < 2:
        raise ValueError(f"{method} reads the CLS row of layer L-1: num_layers must be at least 2, got {num_layers}")
    if method == "scope":
        _check_int("keep", keep, 1, n)
        alpha = p["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or alpha == float("inf"):
            raise ValueError(f"alpha must be a number > 0 (the saliency exponent), got {alpha!r}")
        p["alpha"] = float(alpha)
        if p["combine"] not in SCOPE_COMBINE:
            raise ValueError(f"combine must be 'multi' or 'add', got {p['combine']!r}")
        return PruneConfig(method, keep, grid, num_layers, p)

    # VisionZip: K = CLS + Kd dominant patches + C contextual tokens.
    if isinstance(keep, bool) or not isinstance(keep, int) or not 2 <= keep <= n:
        raise ValueError(
            f"keep must be an integer in 2..{n} for visionzip (the CLS token + at least one "
            f"contextual token), got {keep!r}"
        )
    c = p["contextual"]
    if c is not None:
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"contextual must be an integer >= 1 (C merged tokens), got {c!r}")
        if c >= keep:
            raise ValueError(
                f"contextual={c} leaves no room for the CLS token in keep={keep}: "
                f"contextual must be in 1..{keep - 1}"
            )
    return PruneConfig(method, keep, grid, num_layers, p)
