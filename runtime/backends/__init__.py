"""Backends by name, and the choice `auto` makes (with the reason, which the CLI prints).

A backend is a module with three factories, `vision(engine, threads)`, `decoder(engine,
threads)` and `text(engine, threads)`; `preflight(engine)` (cheap compatibility checks) and
`files(engine)` (the directory's files each part reads, verified before use); it is imported only
when chosen. The torch reference backend
ships with the exporter (it needs the checkpoint, torch and the pruning reference), so it is
registered by module path and never imported by an ONNX Runtime or TensorRT run."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ..contract import EngineDir
from ..errors import MissingDependency, UserError
from ..optional import hint, installed_tensorrt_flavours
from .base import Decoder, SequenceDecoder, StepDecoder, TextBackend, VisionBackend, VisionOutput

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
_MODULES = {
    "onnxruntime": "runtime.backends.onnxruntime",
    "tensorrt": "runtime.backends.tensorrt",
    "torch": "exporter.reference_backend",
}

__all__ = [
    "BACKENDS", "Choice", "Decoder", "SequenceDecoder", "StepDecoder", "TextBackend", "VisionBackend",
    "VisionOutput", "choose", "provider",
]


def provider(name: str) -> ModuleType:
    """The module implementing backend `name` (its factories build the parts)."""
    if name not in _MODULES:
        raise UserError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0] or "exporter"
        raise MissingDependency(missing, f"--backend {name}", hint(missing), str(exc)) from None


@dataclass(frozen=True)
class Choice:
    backend: str
    reason: str  # why this backend (for `auto`: why not TensorRT, when it is not)


def _tensorrt_unusable(engine: EngineDir) -> str | None:
    """Why the engine directory's TensorRT engines cannot run here, or None if they can."""
    cfg = engine.config
    if not cfg.engine.built or not engine.vision.engine or not engine.decoder.engine:
        return f"no TensorRT engines in this directory; the build said: {cfg.engine.reason or 'built without them'}"
    flavour = cfg.engine.backend or "tensorrt"
    if flavour not in installed_tensorrt_flavours():
        return f"the engines were built with {flavour}, which is not installed here"
    from .cuda import gpu_problem

    return gpu_problem(cfg.engine)


def choose(engine: EngineDir, requested: str) -> Choice:
    if requested not in BACKENDS:
        raise UserError(f"unknown --backend {requested!r}: use one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return Choice(requested, "requested with --backend")
    problem = _tensorrt_unusable(engine)
    if problem is None:
        return Choice("tensorrt", f"{engine.config.engine.backend} engines run on this GPU")
    return Choice("onnxruntime", problem)
