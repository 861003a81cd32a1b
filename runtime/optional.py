"""Lazy imports of optional heavy libraries with one-line install hints."""
from __future__ import annotations

import importlib
from types import ModuleType

from exporter.errors import UserError

HINTS = {
    "onnxruntime": "pip install onnxruntime (CPU) or onnxruntime-gpu",
    "tensorrt": "install TensorRT >= 10.3 (JetPack 6.1+ on Orin, `pip install tensorrt` on a desktop GPU host)",
    "tensorrt_llm": "install TensorRT-LLM (`pip install tensorrt_llm`, a release that still builds TensorRT engines)",
    "torch.cuda": "a CUDA build of PyTorch and an NVIDIA GPU",
}


def need(module: str, backend: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"--backend {backend} needs {module}, which is not importable ({exc}): "
                        f"{HINTS.get(module, 'pip install ' + module)}") from None


def have(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
