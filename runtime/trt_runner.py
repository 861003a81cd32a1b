"""Running a serialized engine with TensorRT (or TensorRT-RTX) and torch CUDA buffers.

The engine's compatibility is checked before deserialisation: the library and version recorded
in config.json must match the installed one, and the GPU must be one the engine was built for;
TensorRT would otherwise abort or print a long log and return None.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from exporter.errors import UserError

from .engine_dir import EngineDir
from .optional import need


def _load_trt(record: dict[str, Any]):
    backend = record.get("backend") or "tensorrt"
    module = "tensorrt" if backend == "tensorrt" else "tensorrt_rtx_bindings"
    if module == "tensorrt_rtx_bindings":
        need("tensorrt_rtx_libs", "tensorrt")
    trt = need(module, "tensorrt")
    installed = getattr(trt, "__version__", "?")
    built = record.get("version")
    if built and installed.split(".")[:3] != str(built).split(".")[:3]:
        raise UserError(f"the engines were built with {backend} {built} but {installed} is installed: "
                        "rebuild the engine directory on this machine")
    return trt


def check_gpu(record: dict[str, Any]) -> None:
    torch = need("torch", "tensorrt")
    if not torch.cuda.is_available():
        raise UserError("--backend tensorrt needs an NVIDIA GPU and a CUDA build of PyTorch; none is available")
    want = record.get("compute_capability")
    have = "%d.%d" % torch.cuda.get_device_capability()
    if want and str(want) != have and not record.get("hardware_compatible"):
        raise UserError(f"the engines were built for a GPU with compute capability {want}, "
                        f"this GPU is {have}: rebuild the engine directory on this machine")


class TrtEngine:
    def __init__(self, engine_dir: EngineDir, name: str | None, what: str, record: dict | None = None):
        record = record or engine_dir.config.get("engine", {})
        path = engine_dir.file(name, what)
        trt = _load_trt(record)
        check_gpu(record)
        import torch

        self.torch, self.trt = torch, trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        blob = path.read_bytes()
        validity = getattr(self.runtime, "get_engine_validity", None)  # TensorRT >= 10.8: header check only
        if validity is not None:
            try:
                verdict = validity(blob)
                verdict = verdict[0] if isinstance(verdict, tuple) else verdict
            except Exception:  # binding shape differs between releases: fall back to deserialising
                verdict = None
            if verdict is not None and "VALID" != str(verdict).split(".")[-1]:
                raise UserError(f"{path.name} cannot run here ({str(verdict).split('.')[-1].lower()}): "
                                "it was built by another TensorRT version or for another GPU; rebuild it")
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise UserError(f"{path.name} cannot run here (built by another TensorRT version or for another GPU)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.profile = 0

    def input_dtype(self, name: str) -> str:
        kind = str(self.engine.get_tensor_dtype(name)).split(".")[-1].upper()
        return {"HALF": "float16", "FLOAT": "float32", "INT64": "int64", "INT32": "int32", "BOOL": "bool"}[kind]

    def set_profile(self, index: int) -> None:
        if index != self.profile and self.engine.num_optimization_profiles > index:
            self.context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self.profile = index

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None,
            aliases: dict[str, Any] | None = None) -> dict[str, Any]:
        """Feeds are numpy arrays or CUDA tensors; outputs come back as numpy unless they are
        KV-cache tensors that the caller asked to keep on the GPU (names starting 'present').
        `aliases`: outputs written into the given CUDA tensor (an in-place KV cache binds each
        present.* output to its past_key_values.* input buffer) instead of a new one."""
        aliases = aliases or {}
        torch = self.torch
        keep: dict[str, Any] = {}
        for name, value in feeds.items():
            t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            t = t.cuda().contiguous()
            keep[name] = t
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        results = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:
            if self.engine.get_tensor_mode(name) != self.trt.TensorIOMode.OUTPUT:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = getattr(torch, self.input_dtype(name))
            out = aliases[name] if name in aliases else torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            results[name] = out
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise UserError("TensorRT execution failed (see the log above)")
        self.stream.synchronize()
        wanted = outputs or list(results)
        return {n: (results[n] if n.startswith("present") else results[n].cpu().numpy()) for n in wanted}
