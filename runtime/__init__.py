"""edgeprune runtime: engine directory -> text, over TensorRT, ONNX Runtime, torch or a
TensorRT-LLM decoder. Heavy optional libraries are imported by the backend that needs them, and
`import runtime` itself imports nothing but the standard library: the pipeline loads on first use."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["BACKENDS", "Generation", "Pipeline"]

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import BACKENDS, Generation, Pipeline


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
