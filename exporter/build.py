"""`python -m exporter build`: checkpoint -> engine directory (ONNX graphs, engines, config.json)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runtime.contract import (
    EngineConfig,
    EngineSection,
    RANDOM_WEIGHTS,
    Files,
    PluginSection,
    PreprocessSection,
    Tensors,
    TextSection,
    VisionSection,
    parse,
    write_config,
)
from runtime.errors import UserError

from .decoder_options import calibration_embeddings, choose_kv_cache, quant_spec
from .engine_dir import check_output_target, staged_output


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
    quantize: str = "none"  # none | int8 | int4 (decoder weights only)
    group_size: int = 128  # int4 block of input channels: 128 | 64
    calibration: str = "rtn"  # rtn | awq
    calib_images: Path | None = None
    calib_prompts: Path | None = None
    quantize_lm_head: bool = False
    kv_cache: str | None = None  # inplace | concat | None = inplace where the backend can build it
    target: str | None = None  # orin-nano | orin-nx | agx-orin: warn when the engines will not fit
    command: str = ""
    verbose: bool = False  # TensorRT's benign warnings and INFO messages too


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


def _resolve_backend(name: str, verbose: bool = False):
    from . import trt_compat

    if name == "onnx":
        return None, "--backend onnx: ONNX graphs only"
    backend = trt_compat.available_backend() if name == "auto" else trt_compat.load_backend(name)
    if backend is None:
        return None, (
            "no TensorRT library is installed (tensorrt or tensorrt-rtx); wrote the ONNX graphs "
            "only. Install one (pip install 'edgeprune[rtx]') and build again to get engines"
        )
    if verbose:
        backend.logger = trt_compat.make_logger(backend.trt, verbose=True)
    return backend, None


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
        return None, None, "--selector onnx" if wanted == "onnx" else "no TensorRT backend (ONNX graphs only)"
    if cfg.method in NO_PLUGIN_FORM:
        return None, None, NO_PLUGIN_FORM[cfg.method]
    try:
        import plugins

        from .plugin_node import plugin_selector
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

    import plugins

    for folder in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if folder and (Path(folder) / "libtensorrt_rtx.so").exists():
            return True
    return plugins.provide_rtx_soname()


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
        from .plugin_node import plugin_selector as factory
    return onnx_export.export_anyres_vision_onnx(parts, plan, path, selector_factory=factory, **kwargs)


def _anyres_fields(plan, loaded, work: Path, plugin: PluginSection | None) -> dict[str, Any]:
    """`vision.anyres` (and what it changes in `pruning` and `plugin`) for the runtime. `none`
    keeps the stock unpad + newline merge, so its learned row separator is written next to the
    engines (image_newline.npy, float32)."""
    newline = None
    if not plan.pruned and loaded.image_newline is not None:
        import numpy as np

        np.save(work / Files.IMAGE_NEWLINE, loaded.image_newline.detach().float().cpu().numpy())
        newline = Files.IMAGE_NEWLINE
    fields: dict[str, Any] = {"anyres": plan.section(newline)}
    if plan.pruned:  # the largest branch's constants, with K per image as the user gave it
        fields["pruning"] = replace(plan.config.describe(), keep=plan.keep)
    if plugin is not None:
        from .plugin_node import plugin_fields

        branches = [{"views": list(b.views), "keep": b.keep, "fields": plugin_fields(b.cfg)} for b in plan.branches]
        fields["plugin"] = parse(PluginSection, {"library": plugin.library, "fields": plugin.fields,
                                                 "branches": branches}, "vision.plugin")
    return fields


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


def _text_tower(options: BuildOptions, loaded, cfg, work: Path) -> TextSection | None:
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
    """Checkpoint -> engine directory, as a sequence of named steps inside an atomic staging
    folder: vision graph(s), processor, text tower, decoder, engines, config.json."""
    started = time.time()
    if options.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {options.max_batch}")
    check_output_target(options.out)
    quant, calib_images, calib_prompts = quant_spec(options)
    if options.target is not None:
        from .memory_budget import module_for

        module_for(options.target)  # unknown names fail before any work
    backend, engine_reason = _resolve_backend(options.backend, options.verbose)
    kv_cache, kv_note = choose_kv_cache(options, backend)
    if kv_note:
        _say(kv_note)
    loaded = _load(options)
    processor = _processor(loaded)
    plan = _anyres_plan(options, loaded)
    cfg = plan.config if plan is not None else _prune_config(options, loaded)
    projection = _clip_projection(options, loaded, cfg)
    selector, plugin_lib, selector_reason = _plugin_selector(options, backend, cfg)
    if backend is not None and selector is None:
        _say(f"the engine selects tokens with standard ONNX ops, not the EdgePruneSelect plugin: {selector_reason}")

    with staged_output(options.out) as work:
        vision = _vision_graphs(options, loaded, plan, cfg, projection, selector, plugin_lib, selector_reason, work)
        _save_processor(processor, work)
        text = _text_tower(options, loaded, cfg, work)
        decoder_module = _decoder_module() if options.decoder else None
        decoder = None
        if decoder_module is not None:
            calibration = calibration_embeddings(options, loaded, plan, work, vision, text, quant, calib_images,
                                                 calib_prompts)
            if quant.enabled:
                _say(f"quantizing the decoder's linear layers to {quant.scheme} ({quant.calibration}"
                     + (f", group {quant.group_size}" if quant.scheme == "int4" else "") + ")")
            decoder = decoder_module.export_decoder(
                loaded, work, precision=options.precision, max_batch=options.max_batch,
                max_input_len=_max_input_len(options, plan, cfg), max_output_len=options.max_output_len,
                visual_tokens=_visual_tokens(plan, cfg), kv_cache=kv_cache, quant=quant, calibration=calibration,
                partial_int4_blocks=backend is None,
            )
        engine = EngineSection(None, None, False, engine_reason)
        if backend is not None:
            engine_onnx = work / (vision.plugin_onnx or vision.onnx)
            vision, engine = _build_engines(backend, work, engine_onnx, vision, options, loaded.vision, plugin_lib)
            if text is not None:
                from .text_tower_export import build_text_engine

                text = build_text_engine(backend, work, text, options.max_batch)
            if decoder is not None:
                decoder = decoder_module.build_decoder_engine(backend, work, decoder,
                                                              timing_cache=work / Files.TIMING_CACHE)
        config = EngineConfig(
            format="", format_version=0, artifacts={},  # stamped by write_config
            command=options.command,
            model=loaded.describe(),
            precision=options.precision,
            max_batch=options.max_batch,
            vision=vision,
            text=text,
            decoder=decoder,
            engine=engine,
            versions=versions(backend),
            build_seconds=round(time.time() - started, 1),
        )
        if options.target is not None:
            from .memory_budget import warn_if_too_big

            warn_if_too_big(work, config, options.target, _say)
        write_config(work, config)
    if not engine.built:
        _say(f"no engine was built: {engine_reason}")
    _say(f"wrote {options.out}")
    return Path(options.out)


def _vision_graphs(options: BuildOptions, loaded, plan, cfg, projection, selector, plugin_lib, selector_reason,
                   work: Path) -> VisionSection:
    """vision.onnx (standard ops, for ONNX Runtime) and, with the plugin selector, the
    vision_plugin.onnx TensorRT builds from; returns the `vision` section."""
    tokens = f"K={cfg.output_count}"
    if cfg.method == "visionzip" and plan is None:
        tokens += f": CLS + {cfg.dominant_patches} dominant + {cfg.contextual} contextual"
    if plan is not None and plan.pruned:
        tokens = f"K={plan.keep} per image: " + "/".join(str(b.output) for b in plan.branches) + " per view"
    _say(f"exporting the {cfg.method} vision graph ({tokens}, {options.precision})")
    common = dict(precision=options.precision, debug_scores=options.debug_scores, clip_projection=projection)
    graph = _export_vision(plan, loaded.vision, cfg, work / Files.VISION_ONNX, **common)
    plugin = None
    if selector is not None:
        from .plugin_node import plugin_fields

        _export_vision(plan, loaded.vision, cfg, work / Files.VISION_PLUGIN_ONNX, selector=selector, **common)
        plugin = PluginSection(str(plugin_lib), plugin_fields(cfg))
    fields: dict[str, Any] = {}
    if plan is not None:
        fields = _anyres_fields(plan, loaded, work, plugin)
    return VisionSection(
        onnx=Files.VISION_ONNX,
        onnx_files=graph.files,
        engine=None,
        selector="plugin" if selector else "onnx",
        selector_reason=selector_reason,
        pruning=fields.get("pruning") or cfg.describe(),
        inputs=graph.inputs,
        outputs=graph.outputs,
        preprocess=_preprocess(loaded),
        anyres=fields.get("anyres"),
        plugin_onnx=Files.VISION_PLUGIN_ONNX if selector is not None else None,
        plugin=fields.get("plugin", plugin),
    )


def _processor(loaded):
    """The processor the engine directory will hold: the checkpoint's own, or, for random-weight
    models (which have none), the built-in tiny model's (CLIP preprocessing, a local tokenizer,
    the LLaVA chat format). A checkpoint whose processor cannot be loaded fails here, at build
    time, rather than on the device."""
    if loaded.processor is not None:
        return loaded.processor
    if loaded.source != RANDOM_WEIGHTS:
        raise UserError(loaded.processor_error or f"the checkpoint {loaded.name} has no processor "
                        "(preprocessor, tokenizer and chat template); add one to the checkpoint directory")
    from transformers import AutoProcessor

    from models import TINY_NAME, TINY_NEXT_NAME, ensure_tiny_checkpoint

    return AutoProcessor.from_pretrained(ensure_tiny_checkpoint(TINY_NEXT_NAME if loaded.anyres else TINY_NAME),
                                         local_files_only=True)


def _save_processor(processor, work: Path) -> None:
    """Write processor/ and check that the runtime's own preprocessing and prompt code can read
    it (it must equal the HF processor on the device, without transformers)."""
    from runtime.images import image_processor_from_dir
    from runtime.prompts import ChatEncoder

    folder = work / Files.PROCESSOR
    processor.save_pretrained(folder)
    try:
        image_processor_from_dir(folder)
        ChatEncoder.from_dir(folder)
    except UserError as exc:
        raise UserError(f"the checkpoint's processor cannot be used by the edgeprune runtime: {exc}") from None


def _preprocess(loaded) -> PreprocessSection:
    from models.specs import CLIP_MEAN, CLIP_STD

    proc = getattr(loaded.processor, "image_processor", None)
    return PreprocessSection(
        image_size=loaded.vision.image_size,
        mean=[float(x) for x in (getattr(proc, "image_mean", None) or CLIP_MEAN)],
        std=[float(x) for x in (getattr(proc, "image_std", None) or CLIP_STD)],
        processor=Files.PROCESSOR,
    )


def _decoder_module():
    try:
        from . import decoder_export
    except ImportError:
        return None
    return decoder_export


def _build_engines(backend, work: Path, onnx_path: Path, vision: VisionSection, options, parts,
                   plugin_lib) -> tuple[VisionSection, EngineSection]:
    from .trt_compat import build_engine

    size = parts.image_size
    views = vision.anyres.max_views if vision.anyres is not None else 1  # anyres: a row per view
    top, opt = options.max_batch * views, views
    T = Tensors
    shapes = {T.PIXEL_VALUES: ((1, 3, size, size), (opt, 3, size, size), (top, 3, size, size))}
    inputs = {t.name: t for t in vision.inputs}
    if T.VIEW_BUDGET in inputs:
        shapes[T.VIEW_BUDGET] = ((1,), (opt,), (top,))
    if T.TEXT_EMBEDS in inputs:
        dim = inputs[T.TEXT_EMBEDS].shape[1]
        shapes[T.TEXT_EMBEDS] = ((1, dim), (opt, dim), (top, dim))
    _say(f"building the vision engine with {backend.name} {backend.version}")
    info = build_engine(
        backend, onnx_path, work / Files.VISION_ENGINE, profiles=[shapes], timing_cache=work / Files.TIMING_CACHE,
        plugin_libraries=[plugin_lib] if plugin_lib else (), label="vision engine",
    )
    vision = replace(vision, engine=Files.VISION_ENGINE, engine_io=info["io"], engine_profiles=info["profiles"])
    return vision, EngineSection(backend.name, backend.version, True, None)
