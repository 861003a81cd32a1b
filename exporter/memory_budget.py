"""Device-memory estimate of an engine directory and which Jetson Orin modules it fits.

Jetson modules share one DRAM between the CPU and the GPU, so everything counts against the
module's memory: the engines' weights, the KV cache at the engine's maximum batch and length,
activations, and what the system needs. The estimate:

- weights: the size of each engine file (or, without engines, of its ONNX graph and external
  data: for TensorRT the weights dominate the plan);
- KV cache: 2 (K and V) x layers x max_batch x kv_heads x head_dim x max_seq_len x dtype bytes;
  a concat-cache decoder holds the past and the grown present at once, so it counts twice;
- activations: the decoder's prefill at max_batch x max_input_len (hidden states, the MLP's
  intermediate, one layer's float32 attention scores and probabilities, the float32 logits),
  which bounds TensorRT's activation memory for these graphs;
- reserved: RESERVED_GIB for Linux (L4T, headless), the CUDA context, the TensorRT runtime
  libraries (cuBLAS/cuDNN kernels) and the runtime's own process. That is an assumption, not a
  measurement: a desktop session or other processes need more.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runtime.contract import DecoderSection, EngineConfig
from runtime.errors import UserError

GIB = 1 << 30
RESERVED_GIB = 2.0
_BYTES = {"float16": 2, "float32": 4}


@dataclass(frozen=True)
class Module:
    key: str
    name: str
    memory_gb: int  # as sold (10^9 bytes)

    @property
    def total_gib(self) -> float:
        return self.memory_gb * 1e9 / GIB

    @property
    def usable_gib(self) -> float:
        return self.total_gib - RESERVED_GIB


MODULES = (
    Module("orin-nano", "Orin Nano 8GB", 8),
    Module("orin-nx", "Orin NX 16GB", 16),
    Module("agx-orin", "AGX Orin 32GB", 32),
    Module("agx-orin-64", "AGX Orin 64GB", 64),
)
TARGETS = ("orin-nano", "orin-nx", "agx-orin")


def module_for(target: str) -> Module:
    for module in MODULES:
        if module.key == target and target in TARGETS:
            return module
    raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")


def _files_size(root: Path, names) -> int:
    return sum((root / n).stat().st_size for n in names if n and (root / n).is_file())


def _weights(root: Path, engine: str | None, onnx_files: list[str]) -> int:
    """The engine file's size, or without one its ONNX graph and external data."""
    if engine and (root / engine).is_file():
        return (root / engine).stat().st_size
    return _files_size(root, onnx_files)


def kv_cache_bytes(dec: DecoderSection) -> int:
    per = 2 * dec.num_layers * dec.max_batch * dec.num_kv_heads * dec.head_dim * dec.max_seq_len
    copies = 1 if dec.kv_cache == "inplace" else 2
    return per * _BYTES[dec.dtype] * copies


def activation_bytes(dec: DecoderSection) -> int:
    b, s, h = dec.max_batch, dec.max_input_len, dec.hidden_size
    inter = dec.intermediate_size or 4 * h
    width = _BYTES[dec.dtype]
    hidden_states = b * s * (4 * h + 3 * inter) * width
    scores = 2 * b * dec.num_heads * s * s * 4
    return hidden_states + scores + b * dec.vocab_size * 4


def estimate(root: Path, config: EngineConfig) -> dict[str, Any]:
    """Bytes per part and the total."""
    root = Path(root)
    vision, text, dec = config.vision, config.text, config.decoder
    parts = {
        "vision_weights": _weights(root, vision.engine, vision.onnx_files or [vision.onnx]),
        "text_weights": _weights(root, text.engine, [text.onnx, text.onnx + ".data"]) if text else 0,
        "decoder_weights": _weights(root, dec.engine, [dec.onnx, dec.onnx_data]) if dec else 0,
        "kv_cache": kv_cache_bytes(dec) if dec else 0,
        "activations": activation_bytes(dec) if dec else 0,
    }
    total = sum(parts.values())
    fits = {m.name: (total / GIB) <= m.usable_gib for m in MODULES}
    return {"parts": parts, "total": total, "reserved_gib": RESERVED_GIB, "fits": fits,
            "kv_cache": dec.kv_cache if dec else None, "max_batch": dec.max_batch if dec else None,
            "max_seq_len": dec.max_seq_len if dec else None}


def lines(root: Path, config: EngineConfig) -> list[str]:
    """`inspect`'s memory lines."""
    e = estimate(root, config)
    p = {k: v / GIB for k, v in e["parts"].items()}
    weights = f"vision {p['vision_weights']:.2f}" + (f", text {p['text_weights']:.2f}" if p["text_weights"] else "") \
        + f", decoder {p['decoder_weights']:.2f}"
    kind = "in place" if e["kv_cache"] == "inplace" else "concat: past + present"
    out = [f"memory     weights (GiB): {weights}",
           f"memory     KV cache {p['kv_cache']:.2f} GiB (batch {e['max_batch']} x {e['max_seq_len']} positions, {kind}); "
           f"activations ~{p['activations']:.2f} GiB; total ~{e['total'] / GIB:.2f} GiB",
           "memory     fits (after " + f"{e['reserved_gib']:.1f} GiB for OS + CUDA/TensorRT runtime): "
           + ", ".join(f"{m.name} ({m.usable_gib:.1f} GiB) {'yes' if e['fits'][m.name] else 'NO'}" for m in MODULES)]
    return out


def warn_if_too_big(root: Path, config: EngineConfig, target: str, say: Callable[[str], None]) -> bool:
    """Prints a warning when the estimate exceeds the target module's usable memory; True if it fits."""
    module = module_for(target)
    e = estimate(root, config)
    total = e["total"] / GIB
    if total <= module.usable_gib:
        say(f"memory estimate {total:.2f} GiB fits {module.name} ({module.usable_gib:.1f} GiB usable)")
        return True
    say(f"warning: these engines need ~{total:.2f} GiB but {module.name} has ~{module.usable_gib:.1f} GiB after "
        f"{RESERVED_GIB:.1f} GiB for the OS and the CUDA/TensorRT runtime; try --quantize int4, a smaller "
        "--max-input-len/--max-output-len or --max-batch (python -m exporter inspect shows the parts)")
    return False
