"""The few CUDA runtime calls edgeprune's TensorRT backend makes, over host memory: "device"
pointers are addresses of ctypes buffers, copies are memmoves. Calls are counted so tests can
check what the backend did (e.g. that the KV cache never came back to the host)."""
from __future__ import annotations

import ctypes
import enum
from types import SimpleNamespace

ALLOCATIONS: dict[int, ctypes.Array] = {}
CALLS: dict[str, int] = {}
CAPABILITY = (8, 6)


class cudaError_t(enum.IntEnum):  # noqa: N801 - the real binding's name
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


def cudaGetDeviceCount():  # noqa: N802
    return cudaError_t.cudaSuccess, 1


def cudaGetDeviceProperties(device):  # noqa: N802
    return cudaError_t.cudaSuccess, SimpleNamespace(major=CAPABILITY[0], minor=CAPABILITY[1])


def cudaStreamCreate():  # noqa: N802
    return cudaError_t.cudaSuccess, 7


def cudaStreamSynchronize(stream):  # noqa: N802
    return (cudaError_t.cudaSuccess,)


def cudaStreamDestroy(stream):  # noqa: N802
    return (cudaError_t.cudaSuccess,)


def cudaMalloc(nbytes):  # noqa: N802
    buffer = (ctypes.c_char * int(nbytes))()
    ptr = ctypes.addressof(buffer)
    ALLOCATIONS[ptr] = buffer
    return cudaError_t.cudaSuccess, ptr


def cudaFree(ptr):  # noqa: N802
    ALLOCATIONS.pop(int(ptr), None)
    return (cudaError_t.cudaSuccess,)


def cudaMemcpyAsync(dst, src, count, kind, stream):  # noqa: N802
    _count(cudaMemcpyKind(kind).name)
    ctypes.memmove(int(dst), int(src), int(count))
    return (cudaError_t.cudaSuccess,)
