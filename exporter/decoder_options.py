"""The decoder's build options that are not about pruning: weight quantization (--quantize,
--group-size, --calibration, --calib-images/--calib-prompts), the KV cache kind (--kv-cache),
all checked before any export work starts."""
from __future__ import annotations

import sys
from pathlib import Path

from runtime.errors import UserError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quant_spec(options):
    """Validated --quantize/--group-size/--calibration/--calib-* (before any work is done)."""
    from .quantize import CALIBRATIONS, GROUP_SIZES, SCHEMES, QuantSpec

    if options.quantize not in SCHEMES:
        raise UserError(f"--quantize must be one of {', '.join(SCHEMES)}, got {options.quantize!r}")
    if options.group_size not in GROUP_SIZES:
        raise UserError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {options.group_size}")
    if options.calibration not in CALIBRATIONS:
        raise UserError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {options.calibration!r}")
    if options.quantize != "none" and not options.decoder:
        raise UserError("--quantize applies to the decoder; drop --no-decoder")
    if options.calibration == "awq":
        if options.quantize == "none":
            raise UserError("--calibration awq needs --quantize int8 or int4")
        if options.calib_images is None:
            raise UserError("--calibration awq needs calibration images: pass --calib-images DIR "
                            "(and optionally --calib-prompts FILE, one prompt per line)")
    images, prompts = [], []
    if options.calib_images is not None or options.calib_prompts is not None:
        from .calibration import calibration_images, calibration_prompts

        if options.calib_images is None:
            raise UserError("--calib-prompts needs --calib-images DIR")
        images, prompts = calibration_images(options.calib_images), calibration_prompts(options.calib_prompts)
    data = {}
    if options.calibration == "awq":
        data = {"images": [p.name for p in images], "images_dir": str(options.calib_images),
                "prompts": prompts, "samples": len(images)}
    spec = QuantSpec(options.quantize, options.group_size, options.calibration, options.quantize_lm_head, data)
    return spec, images, prompts


def choose_kv_cache(options, backend) -> tuple[str, str | None]:
    """(kv cache kind, note). In place needs TensorScatter: TensorRT >= 10.15 (its KV-cache
    update layer), TensorRT-RTX and ONNX Runtime; older TensorRT (10.3 on JetPack 6) gets the
    concat cache."""
    from .decoder_graph import KV_CACHES

    wanted = options.kv_cache
    if wanted is not None and wanted not in KV_CACHES:
        raise UserError(f"--kv-cache must be one of {', '.join(KV_CACHES)}, got {wanted!r}")
    old = backend is not None and backend.name == "tensorrt" and _version(backend.version) < INPLACE_MIN_TENSORRT
    if old:
        need = ".".join(map(str, INPLACE_MIN_TENSORRT))
        if wanted == "inplace":
            raise UserError(f"--kv-cache inplace needs TensorRT >= {need} (TensorScatter -> KV-cache update layer); "
                            f"TensorRT {backend.version} is installed: use --kv-cache concat")
        return "concat", f"TensorRT {backend.version} < {need} has no KV-cache update layer: concat KV cache"
    return wanted or "inplace", None


INPLACE_MIN_TENSORRT = (10, 15)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split(".")[:2] if p.isdigit())


def calibration_embeddings(options, loaded, plan, work: Path, vision, text, spec, images, prompts):
    """AWQ's calibration embeddings through the vision graph just written (None for rtn)."""
    if not (spec.enabled and spec.calibration == "awq"):
        return None
    if plan is not None:
        raise UserError("--calibration awq supports LLaVA-1.5 models; use --calibration rtn for LLaVA-NeXT")
    from models.random_language import language_parts
    from runtime.contract import EngineConfig, EngineDir, EngineSection

    from .calibration import calibration_embeds
    from .decoder_export import language_model

    text_config = loaded.config.text_config
    engine = EngineDir(Path(work), EngineConfig(  # what is written so far; no decoder yet
        format="", format_version=0, model=loaded.describe(),
        precision=options.precision, max_batch=options.max_batch, vision=vision, text=text,
        engine=EngineSection(None, None, False, "calibrating"), artifacts={}))
    if loaded.model is None and getattr(loaded, "language", None) is None:  # random weights: embeddings only
        from models.random_language import LazyRandomLanguage

        import torch

        lazy = LazyRandomLanguage(text_config, torch.float16 if options.precision == "fp16" else torch.float32)
        language, _ = language_parts(lazy.model)
        lazy.materialize(language.embed_tokens)  # drawn first: the same values export_decoder draws
    else:
        language, _ = language_parts(language_model(loaded, options.precision))
    _say(f"AWQ calibration on {len(images)} image(s) through the vision graph")
    return calibration_embeds(engine, images, prompts, language.embed_tokens)
