"""Optional libraries: one place that imports them lazily, says how to install them, and tells
the two TensorRT flavours and their versions apart (the exporter, the runtime and the plugin
build all ask here)."""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from .errors import MissingDependency, UserError

# The one list of install hints, by importable module name.
INSTALL_HINTS = {
    "onnxruntime": "pip install onnxruntime (CPU) or onnxruntime-gpu",
    "tensorrt": "install TensorRT >= 10.3 (JetPack 6.1+ on Orin, or `pip install tensorrt` on a desktop GPU host)",
    "tensorrt_rtx_bindings": "pip install 'edgeprune[rtx]' (tensorrt-rtx-cu13-bindings and tensorrt-rtx-cu13-libs)",
    "tensorrt_llm": "install TensorRT-LLM (`pip install tensorrt_llm`, a release that still builds TensorRT engines)",
    "cuda": "pip install 'edgeprune[gpu]' (cuda-python, which the TensorRT backend uses for device memory)",
    "torch": "pip install 'edgeprune[export]' (the torch reference backend and the exporter need PyTorch)",
    "transformers": "pip install 'edgeprune[export]'",
    "exporter": "pip install 'edgeprune[export]' (the torch reference backend ships with the exporter)",
    "matplotlib": "pip install matplotlib (or 'edgeprune[export]')",
}

MIN_TENSORRT = (10, 3)  # JetPack 6.1/6.2; C++ IPluginV3
TENSORRT_FLAVOURS = ("tensorrt", "tensorrt-rtx")
_FLAVOUR_MODULE = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}


def hint(module: str) -> str:
    return INSTALL_HINTS.get(module.split(".")[0], f"pip install {module.split('.')[0]}")


def need(module: str, needed_for: str) -> ModuleType:
    """Import `module` or raise MissingDependency naming what needed it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(module, needed_for, hint(module), str(exc)) from None


def have(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class TensorRT:
    """An imported TensorRT flavour: `tensorrt` (standard, first choice) or `tensorrt-rtx`."""

    flavour: str
    version: str
    module: ModuleType

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def load_tensorrt(flavour: str, needed_for: str = "building engines") -> TensorRT:
    """Import one flavour's Python bindings (TensorRT-RTX: its libraries first) and check the
    version floor of standard TensorRT."""
    if flavour not in TENSORRT_FLAVOURS:
        raise UserError(f"unknown TensorRT flavour {flavour!r}: use {', '.join(TENSORRT_FLAVOURS)}")
    if flavour == "tensorrt-rtx":
        need("tensorrt_rtx_libs", needed_for)  # puts the shared libraries where the bindings find them
    module = need(_FLAVOUR_MODULE[flavour], needed_for)
    version = str(getattr(module, "__version__", "0"))
    if flavour == "tensorrt" and _version_tuple(version) < MIN_TENSORRT:
        raise UserError(f"TensorRT {version} is too old: edgeprune needs >= "
                        f"{'.'.join(map(str, MIN_TENSORRT))}; {hint('tensorrt')}")
    return TensorRT(flavour, version, module)


def installed_tensorrt_flavours() -> list[str]:
    """The flavours whose bindings are installed, in order of preference (nothing imported)."""
    return [f for f in TENSORRT_FLAVOURS if have(_FLAVOUR_MODULE[f])]
