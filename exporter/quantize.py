"""Weight-only quantization of the decoder's linear layers, in the formats TensorRT consumes.

- int4: symmetric, one scale per block of `group_size` (64 or 128) consecutive *input* channels
  of every output channel, values in [-8, 7], packed two per byte as an ONNX INT4 initializer.
- int8: symmetric, one scale per output channel, values in [-127, 127].

The graph keeps the MatMul's (in, out) weight layout, so a quantized weight W (K, N) becomes
`DequantizeLinear(W_q (K, N), scale, axis, block_size) -> MatMul(x, .)`: int4 blocks run along
axis 0 (K, the input dimension; scale (K / group, N)), int8 scales along axis 1 (N; scale (N,)).
Scales are stored in the graph's float type, and the integers are rounded against the *stored*
(fp16-rounded) scale, so dequantizing in the graph gives exactly `dequantize()` here.

Written here rather than taken from nvidia-modelopt: modelopt's ONNX INT4 path loads and rewrites
a whole ONNX model (the 13.5 GB fp16 decoder plus its quantized copy in host memory) and its
torch AWQ path wants the whole model on a GPU; our decoder is streamed into its external-data
file tensor by tensor, so each weight is quantized the moment it is produced (see README).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMES = ("none", "int8", "int4")
GROUP_SIZES = (128, 64)
CALIBRATIONS = ("rtn", "awq")
INT4_MAX, INT8_MAX = 7, 127
# linear layers of one LLaMA block, in HF names; embeddings, norms and lm_head are not in here
LAYER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class QuantSpec:
    """What the build asked for; `describe()` is config.json's `decoder.quantization`."""

    scheme: str = "none"  # none | int8 | int4
    group_size: int = 128  # int4 only
    calibration: str = "rtn"  # rtn | awq
    lm_head: bool = False  # quantize lm_head too (--quantize-lm-head)
    calibration_data: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.scheme != "none"

    def describe(self, fp_tensors: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": self.scheme}
        if not self.enabled:
            return out
        out.update({
            "weights": "symmetric, weight-only; activations stay in the graph's float type",
            "format": ("INT4 packed two per byte (low nibble first), scale per block of group_size input "
                       "channels: DequantizeLinear(axis=0, block_size) -> MatMul" if self.scheme == "int4" else
                       "INT8, scale per output channel: DequantizeLinear(axis=1) -> MatMul"),
            "group_size": self.group_size if self.scheme == "int4" else None,
            "calibration": {"method": self.calibration, **self.calibration_data},
            "quantized": [f"layers.*.{n}" for n in LAYER_LINEARS] + (["lm_head"] if self.lm_head else []),
            "float_tensors": fp_tensors,
        })
        return out


def _scale_dtype(dtype: str):
    return np.float16 if dtype == "float16" else np.float32


def _safe(amax: np.ndarray, qmax: int, dtype: str) -> np.ndarray:
    """amax / qmax in the stored dtype; all-zero groups get scale 1 (their integers are 0)."""
    scale = (amax / qmax).astype(_scale_dtype(dtype))
    scale[~(scale > 0)] = 1  # zero, or an fp16 underflow
    return scale


def quantize_int4(w: np.ndarray, group_size: int, dtype: str = "float16") -> tuple[np.ndarray, np.ndarray]:
    """w (K, N) float -> (q (K, N) int8 in [-8, 7], scale (ceil(K / group), N) in `dtype`).
    A K that is not a multiple of the group ends with a shorter block (ONNX's blocked
    DequantizeLinear allows it)."""
    k, n = w.shape
    w = np.asarray(w, np.float32)
    blocks_n = -(-k // group_size)
    if blocks_n * group_size != k:
        w = np.concatenate([w, np.zeros((blocks_n * group_size - k, n), np.float32)])
    blocks = w.reshape(blocks_n, group_size, n)
    scale = _safe(np.abs(blocks).max(axis=1), INT4_MAX, dtype)
    q = np.rint(blocks / scale.astype(np.float32)[:, None, :])
    return np.clip(q, -8, INT4_MAX).astype(np.int8).reshape(-1, n)[:k], scale


def quantize_int8(w: np.ndarray, dtype: str = "float16") -> tuple[np.ndarray, np.ndarray]:
    """w (K, N) float -> (q (K, N) int8 in [-127, 127], scale (N,) in `dtype`)."""
    w = np.asarray(w, np.float32)
    scale = _safe(np.abs(w).max(axis=0), INT8_MAX, dtype)
    q = np.clip(np.rint(w / scale.astype(np.float32)), -INT8_MAX, INT8_MAX)
    return q.astype(np.int8), scale


def dequantize(q: np.ndarray, scale: np.ndarray, scheme: str, group_size: int = 128) -> np.ndarray:
    """The float32 weight (K, N) the graph's DequantizeLinear computes (before its cast)."""
    s = scale.astype(np.float32)
    if scheme == "int4":
        return q.astype(np.float32) * np.repeat(s, group_size, axis=0)[: q.shape[0]]
    return q.astype(np.float32) * s[None, :]


def pack_int4(q: np.ndarray) -> bytes:
    """ONNX INT4 storage: elements in row-major order, two per byte, element 2i in the low
    nibble and 2i+1 in the high nibble; an odd count ends with a zero high nibble."""
    flat = np.asarray(q, np.int8).reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(data: bytes, count: int) -> np.ndarray:
    """Inverse of pack_int4: `count` signed int4 values as int8."""
    raw = np.frombuffer(data, np.uint8)
    nibbles = np.empty(raw.size * 2, np.uint8)
    nibbles[0::2], nibbles[1::2] = raw & 0x0F, raw >> 4
    values = nibbles[:count].astype(np.int8)
    return np.where(values > 7, values - 16, values).astype(np.int8)


def quantize_weight(w: np.ndarray, spec: QuantSpec, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    if spec.scheme == "int4":
        return quantize_int4(w, spec.group_size, dtype)
    if spec.scheme == "int8":
        return quantize_int8(w, dtype)
    raise ValueError(f"no quantizer for {spec.scheme!r}")


def fake_quantize(w: np.ndarray, spec: QuantSpec, dtype: str = "float32") -> np.ndarray:
    """quantize + dequantize: the float weight a quantized graph effectively multiplies by."""
    q, s = quantize_weight(w, spec, dtype)
    return dequantize(q, s, spec.scheme, spec.group_size)
