"""`python -m exporter build`: checkpoint -> engine directory (ONNX graphs, engines, config.json)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine_dir import check_output_target, staged_output, write_config
from .errors import UserError

VISION_ONNX = "vision.onnx"
VISION_PLUGIN_ONNX = "vision_plugin.onnx"
VISION_ENGINE = "vision.engine"
TIMING_CACHE = "timing.cache"


@dataclass
class BuildOptions:
    model: str
    keep: int | None
    out: Path
    method: str = "hivtp"
    random_weights: bool = False
    precision: str = "fp16"
    max_batch: int = 1
    backend: str = "auto"  # auto | tensorrt | tensorrt-rtx | onnx
    selector: str | None = None  # plugin | onnx | None = plugin when available
    debug_scores: bool = False
    text_tower: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    decoder: bool = True
    max_input_len: int | None = None  # None: 1024; anyres: max(1024, image tokens + 512)
    max_output_len: int = 256
    command: str = ""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def versions(backend=None) -> dict[str, str | None]:
    import onnx
    import torch
    import transformers

    out = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        out["onnxruntime"] = None
    out["tensorrt"] = f"{backend.name} {backend.version}" if backend else None
    return out


def _resolve_backend(name: str):
    from . import trt_compat

    if name == "onnx":
        return None, "--backend onnx: ONNX graphs only"
    if name == "auto":
        backend = trt_compat.available_backend()
        if backend is None:
            return None, (
                "no TensorRT library is installed (tensorrt or tensorrt-rtx); wrote the ONNX graphs "
                "only. Install one (pip install 'edgeprune[rtx]') and build again to get engines"
            )
        return backend, None
    return trt_compat.load_backend(name), None


# Methods whose selection stays in standard ops even with --selector plugin (README, "Pruning
# methods"): config.json then says selector "onnx" with this reason.
NO_PLUGIN_FORM = {
    "scope": "scope has no plugin form: its K greedy steps are one ONNX Loop (standard ops) in every engine",
    "visionzip": "visionzip has no plugin form: its dominant top-K, targets and merge are standard ONNX ops "
                 "in every engine",
}


def _plugin_selector(options: BuildOptions, backend, cfg):
    """(selector callable or None, plugin library path or None, reason)."""
    wanted = options.selector
    if wanted == "onnx" or backend is None:
        if wanted == "plugin" and backend is None:
            raise UserError("--selector plugin needs a TensorRT backend (tensorrt or tensorrt-rtx)")
        return None, None, "standard ONNX ops"
    if cfg.method in NO_PLUGIN_FORM:
        return None, None, NO_PLUGIN_FORM[cfg.method]
    try:
        import plugins
        from plugins.onnx_node import plugin_selector
    except ImportError as exc:
        if wanted == "plugin":
            raise UserError(f"--selector plugin: the plugin package is unavailable ({exc})") from None
        return None, None, "plugin package unavailable"
    if cfg.method == "none" or cfg.keep is None:
        if wanted == "plugin":
            raise UserError(f"--selector plugin: method {cfg.method!r} has no selection to put in a plugin")
        return None, None, "no selection (method none)"
    library = plugins.find_library(backend.name)
    if library is None:
        if wanted == "plugin":
            raise UserError("--selector plugin: no plugin library built; run `python -m plugins build` first")
        return None, None, "plugin library not built (python -m plugins build)"
    if backend.name == "tensorrt-rtx" and not _rtx_parser_can_load_plugins():
        hint = 'export LD_LIBRARY_PATH="$(python -m plugins rtx-env):$LD_LIBRARY_PATH" before running'
        if wanted == "plugin":
            raise UserError(f"--selector plugin with tensorrt-rtx needs libtensorrt_rtx.so on LD_LIBRARY_PATH: {hint}")
        return None, None, f"TensorRT-RTX cannot load plugins in this process ({hint})"
    return plugin_selector(cfg), Path(library), "plugin"


def _rtx_parser_can_load_plugins() -> bool:
    """TensorRT-RTX's parser dlopens the unversioned libtensorrt_rtx.so for plugin nodes and
    aborts the process when it is missing, so check before handing it a plugin graph."""
    import os

    for folder in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if folder and (Path(folder) / "libtensorrt_rtx.so").exists():
            return True
    return False


def _load(options: BuildOptions):
    from models import load_model
    from models.loading import CheckpointError, ModelNotFound

    try:
        return load_model(options.model, random_weights=options.random_weights)
    except (ModelNotFound, CheckpointError) as exc:
        raise UserError(str(exc)) from None


def _prune_config(options: BuildOptions, loaded):
    from .pruning import make_config

    parts = loaded.vision
    try:
        return make_config(
            options.method, options.keep, grid=parts.grid, num_layers=parts.num_layers, **options.params
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


# ---- LLaVA-NeXT (anyres): K is per image, each view gets K_view = floor(K / n_views) ----------
def _anyres_plan(options: BuildOptions, loaded):
    """The per-view branches of an anyres model (None for LLaVA-1.5)."""
    if not loaded.anyres:
        return None
    from .anyres_plan import plan_anyres

    try:
        return plan_anyres(options.method, options.keep, loaded.config, options.params)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _export_vision(plan, parts, cfg, path: Path, *, selector=None, **kwargs):
    """LLaVA-1.5 and anyres `none`: the one-selection graph. Pruned anyres: one branch per
    K_view; with the plugin selector, one plugin node per branch config."""
    from . import onnx_export

    if plan is None or not plan.pruned:
        return onnx_export.export_vision_onnx(parts, cfg, path, selector=selector, **kwargs)
    factory = None
    if selector is not None:
        from plugins.onnx_node import plugin_selector as factory
    return onnx_export.export_anyres_vision_onnx(parts, plan, path, selector_factory=factory, **kwargs)


def _add_anyres(vision_section: dict, plan, loaded, work: Path) -> None:
    """`vision.anyres` for the runtime. `none` keeps the stock unpad + newline merge, so its
    learned row separator is written next to the engines (image_newline.npy, float32)."""
    from .anyres_plan import IMAGE_NEWLINE_FILE

    newline = None
    if not plan.pruned and loaded.image_newline is not None:
        import numpy as np

        np.save(work / IMAGE_NEWLINE_FILE, loaded.image_newline.detach().float().cpu().numpy())
        newline = IMAGE_NEWLINE_FILE
    vision_section["anyres"] = plan.section(newline)
    if plan.pruned:  # the largest branch's constants, with K per image as the user gave it
        vision_section["pruning"] = {**plan.config.describe(), "keep": plan.keep}
    if "plugin" in vision_section:
        from plugins.onnx_node import plugin_fields

        vision_section["plugin"]["branches"] = [
            {"views": list(b.views), "keep": b.keep, "fields": plugin_fields(b.cfg)} for b in plan.branches
        ]


def _visual_tokens(plan, cfg) -> int:
    """The decoder's prompt-table stride per request: the most tokens one image can give."""
    return plan.max_tokens_per_image if plan is not None else cfg.output_count


def _max_input_len(options: BuildOptions, plan, cfg) -> int:
    from .decoder_export import DEFAULT_MAX_INPUT_LEN

    if options.max_input_len is not None:
        return options.max_input_len
    if plan is None:
        return DEFAULT_MAX_INPUT_LEN
    return max(DEFAULT_MAX_INPUT_LEN, _visual_tokens(plan, cfg) + 512)


def _clip_projection(options: BuildOptions, loaded, cfg):
    if not cfg.uses_prompt:
        return None
    from models.loading import CheckpointError, ModelNotFound
    from models.text_tower import load_visual_projection

    try:
        return load_visual_projection(loaded, options.text_tower)
    except (ModelNotFound, CheckpointError) as exc:
        raise UserError(str(exc)) from None


def _text_tower(options: BuildOptions, loaded, cfg, work: Path):
    """text.onnx + text_tokenizer/ for prompt-aware methods: the `text` section, else None."""
    if not cfg.uses_prompt:
        return None
    from models.loading import CheckpointError, ModelNotFound

    from .text_tower_export import export_text_tower

    _say("exporting the CLIP text tower (text.onnx, fp32)")
    try:
        return export_text_tower(loaded, work, override=options.text_tower, precision=options.precision)
    except (ModelNotFound, CheckpointError) as exc:
        raise UserError(str(exc)) from None


def build(options: BuildOptions) -> Path:
    started = time.time()
    if options.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {options.max_batch}")
    check_output_target(options.out)
    backend, engine_reason = _resolve_backend(options.backend)
    loaded = _load(options)
    plan = _anyres_plan(options, loaded)
    cfg = plan.config if plan is not None else _prune_config(options, loaded)
    projection = _clip_projection(options, loaded, cfg)
    parts = loaded.vision
    selector, plugin_lib, selector_reason = _plugin_selector(options, backend, cfg)

    with staged_output(options.out) as work:
        tokens = f"K={cfg.output_count}"
        if cfg.method == "visionzip" and plan is None:
            tokens += f": CLS + {cfg.dominant_patches} dominant + {cfg.contextual} contextual"
        if plan is not None and plan.pruned:
            tokens = f"K={plan.keep} per image: " + "/".join(str(b.output) for b in plan.branches) + " per view"
        _say(f"exporting the {cfg.method} vision graph ({tokens}, {options.precision})")
        vision = _export_vision(
            plan, parts, cfg, work / VISION_ONNX, precision=options.precision,
            debug_scores=options.debug_scores, clip_projection=projection,
        )
        engine_onnx = work / VISION_ONNX
        vision_section: dict[str, Any] = {
            "onnx": VISION_ONNX,
            "onnx_files": vision.pop("files"),
            "engine": None,
            "selector": "plugin" if selector else "onnx",
            "selector_reason": selector_reason,
            "pruning": cfg.describe(),
            "inputs": vision["inputs"],
            "outputs": vision["outputs"],
            "preprocess": _preprocess(loaded),
        }
        if selector is not None:
            from plugins.onnx_node import plugin_fields

            _export_vision(
                plan, parts, cfg, work / VISION_PLUGIN_ONNX, precision=options.precision, selector=selector,
                debug_scores=options.debug_scores, clip_projection=projection,
            )
            engine_onnx = work / VISION_PLUGIN_ONNX
            vision_section["plugin_onnx"] = VISION_PLUGIN_ONNX
            vision_section["plugin"] = {"library": str(plugin_lib), "fields": plugin_fields(cfg)}
        if plan is not None:
            _add_anyres(vision_section, plan, loaded, work)
        if loaded.processor is not None:
            loaded.processor.save_pretrained(work / "processor")
        text_section = _text_tower(options, loaded, cfg, work)

        decoder_section = None
        decoder_module = _decoder_module() if options.decoder else None
        if decoder_module is not None:
            decoder_section = decoder_module.export_decoder(
                loaded, work, precision=options.precision, max_batch=options.max_batch,
                max_input_len=_max_input_len(options, plan, cfg), max_output_len=options.max_output_len,
                visual_tokens=_visual_tokens(plan, cfg),
            )

        engine_section = {"backend": None, "version": None, "built": False, "reason": engine_reason}
        if backend is not None:
            engine_section = _build_engines(
                backend, work, engine_onnx, vision_section, options, parts, cfg, plugin_lib
            )
            if text_section is not None:
                from .text_tower_export import build_text_engine

                text_section = build_text_engine(backend, work, text_section, options.max_batch)
            if decoder_section is not None:
                decoder_section = decoder_module.build_decoder_engine(
                    backend, work, decoder_section, timing_cache=work / TIMING_CACHE
                )

        write_config(work, {
            "command": options.command,
            "model": loaded.describe(),
            "precision": options.precision,
            "max_batch": options.max_batch,
            "vision": vision_section,
            "text": text_section,
            "decoder": decoder_section,
            "engine": engine_section,
            "versions": versions(backend),
            "build_seconds": round(time.time() - started, 1),
        })
    if not engine_section["built"]:
        _say(f"no engine was built: {engine_reason}")
    _say(f"wrote {options.out}")
    return Path(options.out)


def _preprocess(loaded) -> dict[str, Any]:
    from models.specs import CLIP_MEAN, CLIP_STD

    proc = getattr(loaded.processor, "image_processor", None)
    return {
        "image_size": loaded.vision.image_size,
        "mean": list(getattr(proc, "image_mean", None) or CLIP_MEAN),
        "std": list(getattr(proc, "image_std", None) or CLIP_STD),
        "processor": "processor" if loaded.processor is not None else None,
    }


def _decoder_module():
    try:
        from . import decoder_export
    except ImportError:
        return None
    return decoder_export


def _build_engines(backend, work: Path, onnx_path: Path, vision_section, options, parts, cfg, plugin_lib):
    from .trt_compat import build_engine

    size = parts.image_size
    views = (vision_section.get("anyres") or {}).get("max_views", 1)  # anyres: a row per view
    top, opt = options.max_batch * views, views
    shapes = {"pixel_values": ((1, 3, size, size), (opt, 3, size, size), (top, 3, size, size))}
    inputs = {t["name"]: t for t in vision_section["inputs"]}
    if "view_budget" in inputs:
        shapes["view_budget"] = ((1,), (opt,), (top,))
    if "text_embeds" in inputs:
        dim = inputs["text_embeds"]["shape"][1]
        shapes["text_embeds"] = ((1, dim), (opt, dim), (top, dim))
    _say(f"building the vision engine with {backend.name} {backend.version}")
    info = build_engine(
        backend, onnx_path, work / VISION_ENGINE, profiles=[shapes], timing_cache=work / TIMING_CACHE,
        plugin_libraries=[plugin_lib] if plugin_lib else (), label="vision engine",
    )
    vision_section["engine"] = VISION_ENGINE
    vision_section["engine_io"] = info["io"]
    vision_section["engine_profiles"] = info["profiles"]
    return {"backend": backend.name, "version": backend.version, "built": True, "reason": None}
