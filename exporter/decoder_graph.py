"""The LLaMA decoder as a hand-written ONNX graph with a KV cache and the TensorRT-LLM prompt table.

Why by hand and not through `torch.onnx.export`: the graph must (a) follow the prompt-table
contract exactly, (b) keep RMSNorm, softmax and logits in float32 inside an fp16 graph (both
TensorRT backends are strongly typed), and (c) stream a 7B model's weights straight from fp16
torch tensors into one external-data file, one tensor at a time, so host memory never holds a
second copy of the weights (a tracing exporter materialises the whole model and its proto).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from runtime.contract import KV_CACHES
from runtime.contract import Tensors as T

from .onnx_versions import decoder_versions
_DTYPES = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT}
_ALIGN = 4096  # external-data alignment: lets runtimes mmap tensors


@dataclass(frozen=True)
class DecoderShape:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    dtype: str  # float16 | float32

    @property
    def onnx_dtype(self) -> int:
        return _DTYPES[self.dtype]


class _Weights:
    """Appends tensors to one external-data file as they are produced and returns initializers
    that only reference it, so the ModelProto stays a few kilobytes whatever the model size."""

    def __init__(self, data_path: Path):
        self.path = data_path
        self.file = open(data_path, "wb")
        self.offset = 0
        self.initializers: list[TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        pad = (-self.offset) % _ALIGN
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad
        self.file.write(memoryview(array).cast("B"))
        tensor = TensorProto(name=name, dims=list(array.shape),
                             data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(self.offset)),
                           ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += array.nbytes
        self.initializers.append(tensor)
        return name

    def add_raw(self, name: str, data: bytes, dims: list[int], data_type: int) -> str:
        """Pre-encoded bytes (packed INT4) with their logical dims and ONNX element type."""
        pad = (-self.offset) % _ALIGN
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad
        self.file.write(data)
        tensor = TensorProto(name=name, dims=list(dims), data_type=data_type)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(self.offset)),
                           ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(data)
        self.initializers.append(tensor)
        return name

    def close(self) -> None:
        self.file.close()


class _Graph:
    """Tiny node builder: unique names, small constants inline, big ones to external data."""

    def __init__(self, weights: _Weights, opset: int):
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[TensorProto] = []
        self.weights = weights
        self.opset = opset
        self._n = 0

    def reduce_mean_last(self, x: str) -> str:
        if self.opset >= 18:  # axes became an input in opset 18
            return self.op("ReduceMean", x, self.const([-1]), keepdims=1)
        return self.op("ReduceMean", x, axes=[-1], keepdims=1)

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs) -> str | list[str]:
        self._n += 1
        outs = [f"{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self._n}", **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=np.int64) -> str:
        self._n += 1
        name = f"const_{self._n}"
        self.consts.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name


def _np(t: torch.Tensor, dtype: str, transpose: bool = False) -> np.ndarray:
    t = t.detach()
    if transpose:
        t = t.t()
    t = t.to(torch.float16 if dtype == "float16" else torch.float32).contiguous()
    return t.numpy()


def _rms_norm(g: _Graph, x: str, weight: str, eps: float, dtype: int) -> str:
    """HF LlamaRMSNorm: statistics in float32, scale applied after casting back."""
    x32 = g.op("Cast", x, to=TensorProto.FLOAT) if dtype != TensorProto.FLOAT else x
    var = g.reduce_mean_last(g.op("Mul", x32, x32))
    inv = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, g.const(eps, np.float32))))
    y = g.op("Mul", x32, inv)
    if dtype != TensorProto.FLOAT:
        y = g.op("Cast", y, to=dtype)
    return g.op("Mul", weight, y)


def _rotate(g: _Graph, x: str, cos: str, sin: str, half: int) -> str:
    x1, x2 = g.op("Split", x, g.const([half, half]), axis=-1, n_out=2)
    rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))


def _heads(g: _Graph, x: str, n: int, d: int) -> str:
    """(B, S, n*d) -> (B, n, S, d)"""
    return g.op("Transpose", g.op("Reshape", x, g.const([0, 0, n, d])), perm=[0, 2, 1, 3])


def _repeat_kv(g: _Graph, x: str, kv: int, rep: int, d: int) -> str:
    if rep == 1:
        return x
    shape = g.op("Shape", x)
    b, t = g.op("Gather", shape, g.const(0), axis=0), g.op("Gather", shape, g.const(2), axis=0)
    un = g.op("Unsqueeze", x, g.const([2]))  # (B, kv, 1, T, d)
    target = g.op("Concat", g.op("Unsqueeze", b, g.const([0])), g.const([kv, rep]),
                  g.op("Unsqueeze", t, g.const([0])), g.const([d]), axis=0)
    return g.op("Reshape", g.op("Expand", un, target), g.const([0, kv * rep, -1, d]))


def _linear(g: _Graph, x: str, name: str, weight: torch.Tensor, dtype: str, quant) -> str:
    """x @ W^T for an HF (out, in) weight: a plain initializer, or (quantized) the integer
    initializer and its scales behind DequantizeLinear (see exporter.quantize)."""
    if quant is None:
        return g.op("MatMul", x, g.weights.add(name, _np(weight, dtype, True)))
    from .quantize import pack_int4, quantize_weight

    w = weight.detach().float().t().contiguous().numpy()  # (in, out), float32 only for this tensor
    q, scale = quantize_weight(w, quant, dtype)
    del w
    s_name = g.weights.add(name + "_scale", scale)
    if quant.scheme == "int4":
        q_name = g.weights.add_raw(name + "_int4", pack_int4(q), list(q.shape), TensorProto.INT4)
        deq = g.op("DequantizeLinear", q_name, s_name, axis=0, block_size=quant.group_size)
    else:
        q_name = g.weights.add(name + "_int8", q)
        deq = g.op("DequantizeLinear", q_name, s_name, axis=1)
    return g.op("MatMul", x, deq)


def _fused_linear(g: _Graph, x: str, name: str, weights: list[torch.Tensor], dtype: str, quant) -> list[str]:
    """Several linears that read the same input as one MatMul over their weights concatenated
    along the output dimension, then a Split: one GEMM with a wider N runs faster than three
    narrow ones (the q/k/v projections: 0.65x the time at 164 rows on the CPU), and every output
    column is the same dot product, so the results are bit-identical. Quantization commutes with
    the concatenation: int8 scales are per output column, int4 scales per (input block, output
    column)."""
    y = _linear(g, x, name, torch.cat([w.detach() for w in weights], dim=0), dtype, quant)
    return g.op("Split", y, g.const([int(w.shape[0]) for w in weights]), axis=-1, n_out=len(weights))


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """(past inputs, present outputs) in graph order (names from runtime.contract.Tensors)."""
    pairs = T.kv_pairs(layers)
    return [past for past, _ in pairs], [present for _, present in pairs]


def build_decoder_onnx(
    shape: DecoderShape,
    embed: torch.Tensor,
    layer_weights: Callable[[int], dict[str, torch.Tensor]],
    final_norm: torch.Tensor,
    lm_head: torch.Tensor | Callable[[], torch.Tensor],
    inv_freq: torch.Tensor,
    attention_scaling: float,
    onnx_path: Path,
    progress: Iterable[int] | None = None,
    *,
    kv_cache: str = "concat",
    max_seq: int | None = None,
    quant=None,
    quantize_lm_head: bool = False,
) -> tuple[int, int]:
    """Write `onnx_path` and `onnx_path.data`; returns the graph's (opset, IR version).
    `layer_weights(i)` returns layer i's tensors (HF names without the `layers.i.` prefix); it is
    called once per layer so callers may materialise (or AWQ-scale) layers lazily.

    kv_cache "concat": past (B, kv, P, d) in, present = Concat(past, new) (B, kv, P + S, d) out.
    kv_cache "inplace": past_key_values.* are preallocated (B, kv, max_seq, d) buffers; the step's
    keys/values are written at position T - S (T = attention_mask length) by TensorScatter, whose
    output is the graph output present.* (bind it to the same buffer: nothing else is copied), and
    attention reads its first T positions. `quant`: an enabled exporter.quantize.QuantSpec or None.
    `lm_head` may be a callable, called after the last layer (lazily materialised weights)."""
    if kv_cache not in KV_CACHES:
        raise ValueError(f"kv_cache must be one of {KV_CACHES}")
    if kv_cache == "inplace" and not max_seq:
        raise ValueError("the in-place cache needs max_seq")
    opset, ir_version = decoder_versions(kv_cache, quant is not None)
    onnx_path = Path(onnx_path)
    weights = _Weights(onnx_path.with_name(onnx_path.name + ".data"))
    g = _Graph(weights, opset)
    dt, d, H, kv = shape.onnx_dtype, shape.head_dim, shape.heads, shape.kv_heads
    try:
        # ---- embedding + prompt table lookup (TensorRT-LLM PromptTuningEmbedding) ----------
        vocab = g.const(shape.vocab_size)
        is_prompt = g.op("Greater", T.INPUT_IDS, g.const(shape.vocab_size - 1))
        text_ids = g.op("Where", is_prompt, g.const(0), T.INPUT_IDS)
        row = g.op("Add", g.op("Sub", T.INPUT_IDS, vocab),
                   g.op("Mul", g.op("Unsqueeze", T.TASKS, g.const([1])), T.PROMPT_VOCAB_SIZE))
        row = g.op("Where", is_prompt, row, g.const(0))
        emb_w = weights.add("embed_tokens.weight", _np(embed, shape.dtype))
        text_emb = g.op("Gather", emb_w, text_ids, axis=0)
        prompt_emb = g.op("Gather", T.PROMPT_TABLE, row, axis=0)
        h = g.op("Where", g.op("Unsqueeze", is_prompt, g.const([-1])), prompt_emb, text_emb)

        # ---- rotary tables (float32, cast like HF) -----------------------------------------
        freqs = g.op("Mul", g.op("Unsqueeze", g.op("Cast", T.POSITION_IDS, to=TensorProto.FLOAT), g.const([-1])),
                     g.const(inv_freq.float().numpy(), np.float32))
        emb = g.op("Concat", freqs, freqs, axis=-1)
        scale = g.const(attention_scaling, np.float32)
        cos, sin = (g.op("Mul", g.op(fn, emb), scale) for fn in ("Cos", "Sin"))
        if dt != TensorProto.FLOAT:
            cos, sin = g.op("Cast", cos, to=dt), g.op("Cast", sin, to=dt)
        cos, sin = g.op("Unsqueeze", cos, g.const([1])), g.op("Unsqueeze", sin, g.const([1]))

        # ---- causal + padding mask (B, 1, S, T) --------------------------------------------
        s_len = g.op("Gather", g.op("Shape", T.INPUT_IDS), g.const(1), axis=0)
        t_len = g.op("Gather", g.op("Shape", T.ATTENTION_MASK), g.const(1), axis=0)
        k_pos = g.op("Range", g.const(0), t_len, g.const(1))
        q_pos = g.op("Range", g.op("Sub", t_len, s_len), t_len, g.const(1))
        causal = g.op("LessOrEqual", g.op("Unsqueeze", k_pos, g.const([0])), g.op("Unsqueeze", q_pos, g.const([1])))
        keep = g.op("Cast", g.op("Unsqueeze", T.ATTENTION_MASK, g.const([1, 2])), to=TensorProto.BOOL)
        allowed = g.op("And", g.op("Unsqueeze", causal, g.const([0, 1])), keep)
        neg = g.const(np.finfo(np.float32).min, np.float32)
        q_scale = g.const(d ** -0.5, np.float16 if dt == TensorProto.FLOAT16 else np.float32)
        if kv_cache == "inplace":  # every request writes at T - S (left padding aligns them)
            batch = g.op("Slice", g.op("Shape", T.INPUT_IDS), g.const([0]), g.const([1]))
            write_at = g.op("Expand", g.op("Unsqueeze", g.op("Sub", t_len, s_len), g.const([0])), batch)
            t_end = g.op("Unsqueeze", t_len, g.const([0]))

        past, present = io_names(shape.layers)

        def cached(i: int, new: str) -> str:
            """present.* for layer i's new keys or values; returns what attention reads."""
            if kv_cache == "concat":  # the Concat's output is the graph output: no Identity copy
                g.nodes.append(helper.make_node("Concat", [past[i], new], [present[i]], name=f"Concat_{present[i]}",
                                                axis=2))
                return present[i]
            g.nodes.append(helper.make_node("TensorScatter", [past[i], new, write_at], [present[i]],
                                            name=f"TensorScatter_{present[i]}", axis=2, mode="linear"))
            return g.op("Slice", present[i], g.const([0]), t_end, g.const([2]))

        for i in progress if progress is not None else range(shape.layers):
            w = layer_weights(i)
            p = f"layers.{i}."

            def linear(x: str, hf_name: str) -> str:
                short = hf_name.split(".")[-1]
                return _linear(g, x, p + f"{short}.weight", w[f"{hf_name}.weight"], shape.dtype, quant)

            def fused(x: str, short: str, hf_names: tuple[str, ...]) -> list[str]:
                return _fused_linear(g, x, p + f"{short}.weight", [w[f"{n}.weight"] for n in hf_names],
                                     shape.dtype, quant)

            ln1 = weights.add(p + "input_layernorm.weight", _np(w["input_layernorm.weight"], shape.dtype))
            x = _rms_norm(g, h, ln1, shape.eps, dt)
            q, k, v = fused(x, "qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"))
            q, k, v = _heads(g, q, H, d), _heads(g, k, kv, d), _heads(g, v, kv, d)
            q, k = _rotate(g, q, cos, sin, d // 2), _rotate(g, k, cos, sin, d // 2)
            k_all, v_all = cached(2 * i, k), cached(2 * i + 1, v)
            k_rep, v_rep = _repeat_kv(g, k_all, kv, H // kv, d), _repeat_kv(g, v_all, kv, H // kv, d)
            scores = g.op("MatMul", g.op("Mul", q, q_scale), g.op("Transpose", k_rep, perm=[0, 1, 3, 2]))
            if dt != TensorProto.FLOAT:
                scores = g.op("Cast", scores, to=TensorProto.FLOAT)
            probs = g.op("Softmax", g.op("Where", allowed, scores, neg), axis=-1)
            if dt != TensorProto.FLOAT:
                probs = g.op("Cast", probs, to=dt)
            attn = g.op("MatMul", probs, v_rep)
            attn = g.op("Reshape", g.op("Transpose", attn, perm=[0, 2, 1, 3]), g.const([0, 0, H * d]))
            h = g.op("Add", h, linear(attn, "self_attn.o_proj"))
            ln2 = weights.add(p + "post_attention_layernorm.weight",
                              _np(w["post_attention_layernorm.weight"], shape.dtype))
            x = _rms_norm(g, h, ln2, shape.eps, dt)
            gate, up = fused(x, "gate_up_proj", ("mlp.gate_proj", "mlp.up_proj"))
            act = g.op("Mul", gate, g.op("Sigmoid", gate))
            h = g.op("Add", h, linear(g.op("Mul", act, up), "mlp.down_proj"))
            del w

        # ---- last position only -> float32 logits ------------------------------------------
        last = g.op("Slice", h, g.const([-1]), g.const([np.iinfo(np.int64).max]), g.const([1]))
        last = g.op("Reshape", last, g.const([0, shape.hidden]))
        norm_w = weights.add("norm.weight", _np(final_norm, shape.dtype))
        head = lm_head() if callable(lm_head) else lm_head  # a callable: materialised only now
        logits = _linear(g, _rms_norm(g, last, norm_w, shape.eps, dt), "lm_head.weight", head, shape.dtype,
                         quant if quantize_lm_head else None)
        g.nodes.append(helper.make_node("Cast", [logits], [T.LOGITS], to=TensorProto.FLOAT)
                       if dt != TensorProto.FLOAT else helper.make_node("Identity", [logits], [T.LOGITS]))
    finally:
        weights.close()

    i64 = TensorProto.INT64
    cache_len = (max_seq, max_seq) if kv_cache == "inplace" else ("past", "total")
    inputs = [
        helper.make_tensor_value_info(T.INPUT_IDS, i64, ["batch", "seq"]),
        helper.make_tensor_value_info(T.PROMPT_TABLE, dt, ["table_rows", shape.hidden]),
        helper.make_tensor_value_info(T.TASKS, i64, ["batch"]),
        helper.make_tensor_value_info(T.PROMPT_VOCAB_SIZE, i64, [1]),
        helper.make_tensor_value_info(T.POSITION_IDS, i64, ["batch", "seq"]),
        helper.make_tensor_value_info(T.ATTENTION_MASK, i64, ["batch", "total"]),
    ] + [helper.make_tensor_value_info(n, dt, ["batch", kv, cache_len[0], d]) for n in past]
    outputs = [helper.make_tensor_value_info(T.LOGITS, TensorProto.FLOAT, ["batch", shape.vocab_size])] + [
        helper.make_tensor_value_info(n, dt, ["batch", kv, cache_len[1], d]) for n in present
    ]
    graph = helper.make_graph(g.nodes, "edgeprune_decoder", inputs, outputs,
                              initializer=g.consts + weights.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="edgeprune")
    model.ir_version = ir_version
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
    os.replace(tmp, onnx_path)
    return opset, ir_version
