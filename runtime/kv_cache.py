"""The in-place KV cache of decoders built with `kv_cache: inplace` (config.json `decoder`).

Such a decoder takes `past_key_values.<i>.<key|value>` as preallocated (batch, kv_heads,
max_seq_len, head_dim) buffers and returns `present.<i>.<key|value>` of the same shape, produced
by TensorScatter: the step's new keys/values are written at position (attention_mask length -
input length) and nothing else changes. Binding each present output to the *same* buffer as its
past input makes the update in place (ONNX Runtime's TensorScatter skips its copy when the two
share memory; TensorRT's KV-cache update layer requires it), so a decode step never copies the
cache; attention reads the first attention_mask-length positions.

`InplaceKvCache` owns the buffers of one generation; the backends only say how to allocate
(numpy/OrtValue on the CPU, device memory for TensorRT) and how to bind.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from .contract import DecoderSection, Tensors
from .errors import EngineDirError, UserError

DTYPES = ("float16", "float32")


class InplaceKvCache:
    """One buffer per past/present name pair, allocated once per generation by `allocate(shape,
    dtype_name)`; `pairs()` yields (past input name, present output name, buffer)."""

    def __init__(self, section: DecoderSection, batch: int, allocate: Callable[[tuple, str], Any]):
        if section.kv_cache != "inplace":
            raise EngineDirError("this decoder was not built with an in-place KV cache (config.json decoder.kv_cache)")
        if section.dtype not in DTYPES:
            raise EngineDirError(f"unsupported KV cache dtype {section.dtype!r}")
        self.max_seq = section.max_seq_len
        self.shape = (batch, section.num_kv_heads, self.max_seq, section.head_dim)
        self.names = Tensors.kv_pairs(section.num_layers)
        self.buffers = {past: allocate(self.shape, section.dtype) for past, _ in self.names}
        self.steps = 0

    def restart_for(self, batch: int) -> bool:
        """Restart these buffers for the next generation if it has `batch` rows (True), else leave
        them (False: the caller allocates new ones). Nothing needs clearing: each step's attention reads only the first
        attention_mask-length positions, and the prefill writes all of those (padding included)
        before anything reads them, so a previous generation's values are never seen. Keeping
        the buffers saves allocating and faulting in (TensorRT: zero-filling on the host and
        copying to the device) the whole cache on every request; the memory budget counts it as
        resident anyway."""
        if self.shape[0] != batch:
            return False
        self.steps = 0
        return True

    def keep_rows(self, rows, take: Callable[[Any, Any], Any]) -> None:
        """Drop every batch row but `rows`; `take(buffer, rows)` returns a new buffer of those rows."""
        self.buffers = {past: take(buffer, rows) for past, buffer in self.buffers.items()}
        self.shape = (len(rows), *self.shape[1:])

    def pairs(self) -> Iterator[tuple[str, str, Any]]:
        for past, present in self.names:
            yield past, present, self.buffers[past]

    def check(self, feeds: dict[str, Any]) -> None:
        """The step's total length (attention_mask columns) must fit the preallocated cache."""
        total = feeds[Tensors.ATTENTION_MASK].shape[1]
        if total > self.max_seq:
            raise UserError(f"the sequence reached {total} tokens, more than the decoder's KV cache of "
                            f"{self.max_seq} (--max-input-len + --max-output-len)")
        if feeds[Tensors.ATTENTION_MASK].shape[0] != self.shape[0]:
            raise UserError(f"batch of {feeds[Tensors.ATTENTION_MASK].shape[0]} but the cache was started for "
                            f"{self.shape[0]}")
