"""edgeprune runtime: engine directory -> text, over TensorRT, ONNX Runtime, torch or a
TensorRT-LLM decoder. Heavy optional libraries are imported by the backend that needs them."""
from .pipeline import BACKENDS, Generation, Pipeline

__all__ = ["BACKENDS", "Generation", "Pipeline"]
