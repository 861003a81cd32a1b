"""ctypes access to the host-compiled selection (libedgeprune_host.so): the kernel's own
per-patch code and field checks, run on the CPU so CI can compare them with
`exporter.pruning.select_tokens` without a GPU."""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch


class HostSelectError(ValueError):
    """The shim rejected the fields or shapes; the message is the plugin's own."""


class HostShim:
    def __init__(self, library: str | Path):
        self._lib = ctypes.CDLL(str(library))
        fn = self._lib.edgeprune_host_select
        fn.restype = ctypes.c_int32
        fn.argtypes = [
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_int32),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int32),
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
        ]
        self._fn = fn

    def select(
        self,
        fields: Mapping[str, Any],
        layer_rows: torch.Tensor | np.ndarray,
        similarity: torch.Tensor | np.ndarray | None = None,
        nb_inputs: int | None = None,
    ) -> np.ndarray:
        """(B, rows, N) float32 -> (B, K') int32 exactly as the kernel computes it; raises
        HostSelectError with the plugin's message when it would refuse to build."""
        rows = np.ascontiguousarray(np.asarray(layer_rows, dtype=np.float32))
        batch, num_rows, n = rows.shape
        sim = None if similarity is None else np.ascontiguousarray(np.asarray(similarity, dtype=np.float32))
        if nb_inputs is None:
            nb_inputs = 1 if sim is None else 2
        count, names, types, data, lengths, keep_alive = _marshal(fields)
        msg = ctypes.create_string_buffer(512)
        # Output sized for the largest possible K' (N); the shim returns the real count.
        out = np.full((batch, n), -1, dtype=np.int32)
        got = self._fn(
            count,
            names,
            types,
            data,
            lengths,
            nb_inputs,
            num_rows,
            n,
            batch,
            rows.ctypes.data,
            None if sim is None else sim.ctypes.data,
            out.ctypes.data,
            msg,
            len(msg),
        )
        if got < 0:
            raise HostSelectError(msg.value.decode())
        # The kernel writes (B, K') contiguously; reinterpret the first B*K' values.
        return out.reshape(-1)[: batch * got].reshape(batch, got).copy()

    def create_runtime(self, layer: str, fields: Mapping[str, Any]) -> None:
        """What the plugin's creator does when TensorRT deserialises an engine: parse the fields
        and record them for `edgeprune_runtime_fields_json` (runtime.backends.plugin_readback)."""
        count, names, types, data, lengths, _keep_alive = _marshal(fields)
        msg = ctypes.create_string_buffer(512)
        fn = self._lib.edgeprune_host_create_runtime
        fn.restype = ctypes.c_int32
        if fn(layer.encode(), count, names, types, data, lengths, msg, len(msg)) != 0:
            raise HostSelectError(msg.value.decode())


def _marshal(fields: Mapping[str, Any]):
    """(count, names, types, data, lengths, arrays to keep alive) as the shim's C arrays:
    float -> one float32 (type 1), ints and int lists -> int32 arrays (type 0)."""
    keep_alive, names, types, data, lengths = [], [], [], [], []
    for name, value in fields.items():
        if isinstance(value, float):
            arr = np.array([value], dtype=np.float32)
            types.append(1)
        else:
            arr = np.atleast_1d(np.array(value, dtype=np.int32))
            types.append(0)
        keep_alive.append(arr)
        names.append(name.encode())
        data.append(arr.ctypes.data)
        lengths.append(arr.size)
    count = len(names)
    return (count, (ctypes.c_char_p * count)(*names), (ctypes.c_int32 * count)(*types),
            (ctypes.c_void_p * count)(*data), (ctypes.c_int32 * count)(*lengths), keep_alive)
