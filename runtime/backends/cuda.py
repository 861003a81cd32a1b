"""Device memory and GPU facts for the TensorRT backend through cuda-python (the CUDA runtime
bindings TensorRT's own Python samples use), so the runtime needs no torch on a Jetson.

Only what the backend needs: is there a GPU and which compute capability, a stream, and device
arrays that hold a shape and a numpy dtype and copy to and from host arrays."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import UserError
from ..optional import need


def cudart() -> Any:
    """The CUDA runtime module of cuda-python (cuda.bindings.runtime; `cuda.cudart` before 12.6)."""
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]

        return runtime
    except ImportError:
        return need("cuda.cudart", "--backend tensorrt")


def check(result: Any, what: str) -> Any:
    """cuda-python calls return (error, *values): raise on an error, return the value(s)."""
    rt = cudart()
    err, values = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        raise UserError(f"CUDA error during {what}: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@lru_cache(maxsize=1)
def device_capability() -> str | None:
    """'major.minor' of GPU 0, or None when no GPU is visible (or cuda-python is missing)."""
    try:
        rt = cudart()
        err, count = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess or count < 1:
            return None
        err, prop = rt.cudaGetDeviceProperties(0)
        if err != rt.cudaError_t.cudaSuccess:
            return None
        return f"{prop.major}.{prop.minor}"
    except (UserError, ImportError, OSError, RuntimeError):
        return None


def gpu_problem(engine_record) -> str | None:
    """Why engines recorded in config.json's `engine` section cannot run on this machine's GPU,
    or None. TensorRT itself would abort or print a long log instead."""
    from ..optional import have

    if not (have("cuda.bindings") or have("cuda.cudart")):
        return "cuda-python is not installed (pip install 'edgeprune[gpu]')"
    have_cc = device_capability()
    if have_cc is None:
        return "no NVIDIA GPU is visible"
    want = engine_record.compute_capability
    if want and want != have_cc and not engine_record.hardware_compatible:
        return f"the engines were built for compute capability {want}, this GPU is {have_cc}"
    return None


class Stream:
    def __init__(self):
        self.rt = cudart()
        self.handle = check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def synchronize(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def __int__(self) -> int:
        return int(self.handle)

    def close(self) -> None:
        if self.handle is not None:
            self.rt.cudaStreamDestroy(self.handle)
            self.handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to free
            pass


class DeviceArray:
    """A contiguous device buffer with a shape and numpy dtype (freed when collected)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any):
        self.rt = cudart()
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr = int(check(self.rt.cudaMalloc(max(1, self.nbytes)), "cudaMalloc"))

    @classmethod
    def from_host(cls, array: np.ndarray, stream: Stream) -> "DeviceArray":
        array = np.ascontiguousarray(array)
        out = cls(array.shape, array.dtype)
        if out.nbytes:
            kind = out.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            check(out.rt.cudaMemcpyAsync(out.ptr, array.ctypes.data, out.nbytes, kind, int(stream)), "cudaMemcpyAsync")
            stream.synchronize()  # `array` may be a temporary
        return out

    def to_host(self, stream: Stream) -> np.ndarray:
        host = np.empty(self.shape, self.dtype)
        if self.nbytes:
            kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
            check(self.rt.cudaMemcpyAsync(host.ctypes.data, self.ptr, self.nbytes, kind, int(stream)), "cudaMemcpyAsync")
            stream.synchronize()
        return host

    def free(self) -> None:
        if self.ptr:
            self.rt.cudaFree(self.ptr)
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:  # interpreter shutdown
            pass
