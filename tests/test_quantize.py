"""The weight quantizers: INT4 packing and scales against plain references and ONNX Runtime's
DequantizeLinear, and AWQ against round-to-nearest on planted outlier channels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.awq import apply_awq, search_scale
from exporter.quantize import (QuantSpec, dequantize, fake_quantize, pack_int4, quantize_int4, quantize_int8,
                               unpack_int4)


def _plain_pack(values) -> bytes:
    """One byte per pair, written out by hand: element 2i -> bits 0-3, element 2i+1 -> bits 4-7."""
    out = bytearray()
    values = list(values) + ([0] if len(values) % 2 else [])
    for lo, hi in zip(values[0::2], values[1::2]):
        out.append((lo & 0xF) | ((hi & 0xF) << 4))
    return bytes(out)


@pytest.mark.parametrize("count", [1, 2, 7, 64, 1001])
def test_int4_packing_matches_plain_reference_and_onnx(count):
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(count)
    q = rng.integers(-8, 8, count).astype(np.int8)
    q[:2] = [-8, 7][: min(2, count)]
    packed = pack_int4(q)
    assert packed == _plain_pack(q.tolist())
    assert len(packed) == (count + 1) // 2
    np.testing.assert_array_equal(unpack_int4(packed, count), q)
    tensor = TensorProto(name="w", dims=[count], data_type=TensorProto.INT4, raw_data=packed)
    np.testing.assert_array_equal(numpy_helper.to_array(tensor).astype(np.int8), q)  # ONNX's own unpacking


def test_worked_example_nibble_order():
    assert pack_int4(np.array([1, -1, 7, -8], np.int8)) == bytes([0xF1, 0x87])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_int4_blocks_scales_and_rounding(dtype):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 24)).astype(np.float32)
    w[:64, 3] = 0  # an all-zero block
    q, scale = quantize_int4(w, 64, dtype)
    assert q.shape == w.shape and scale.shape == (4, 24) and scale.dtype == np.dtype(dtype)
    assert q.min() >= -8 and q.max() <= 7 and scale[0, 3] == 1 and not q[:64, 3].any()
    block_max = np.abs(w.reshape(4, 64, 24)).max(axis=1)
    block_max[0, 3] = 7  # the zero block's scale is 1
    np.testing.assert_allclose(scale.astype(np.float32), block_max / 7, rtol=1e-3 if dtype == "float16" else 1e-6)
    deq = dequantize(q, scale, "int4", 64)
    assert np.all(np.abs(deq - w) <= np.repeat(scale.astype(np.float32), 64, axis=0) / 2 + 1e-6)
    q2, s2 = quantize_int4(deq, 64, dtype)  # quantizing a dequantized weight is the identity
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(s2, scale)


def test_int8_per_output_channel():
    w = np.array([[1.0, -0.5], [-2.54, 0.25], [0.0, 0.125]], np.float32)
    q, scale = quantize_int8(w, "float32")
    np.testing.assert_allclose(scale, [2.54 / 127, 0.5 / 127], rtol=1e-6)
    np.testing.assert_array_equal(q[:, 0], [50, -127, 0])
    np.testing.assert_array_equal(q[:, 1], [-127, 64, 32])


@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_onnxruntime_dequantize_linear_equals_dequantize(scheme):
    """The graph pattern (initializers + DequantizeLinear) decodes to exactly our dequantize()."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = rng.standard_normal((128, 48)).astype(np.float32)
    if scheme == "int4":
        q, scale = quantize_int4(w, 64, "float16")
        wq = TensorProto(name="wq", dims=list(q.shape), data_type=TensorProto.INT4, raw_data=pack_int4(q))
        node = helper.make_node("DequantizeLinear", ["wq", "s"], ["y"], axis=0, block_size=64)
    else:
        q, scale = quantize_int8(w, "float16")
        wq = numpy_helper.from_array(q, "wq")
        node = helper.make_node("DequantizeLinear", ["wq", "s"], ["y"], axis=1)
    graph = helper.make_graph([node], "dq", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
                              initializer=[wq, numpy_helper.from_array(scale, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {})
    np.testing.assert_array_equal(y, dequantize(q, scale, scheme, 64).astype(np.float16))


def _outlier_case(seed=0, t=512, k=256, n=192, outliers=(3, 70, 141, 200), gain=30.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=gen)
    x[:, list(outliers)] *= gain
    w = torch.randn(n, k, generator=gen) * 0.02
    return x, w


@pytest.mark.parametrize("scheme,group", [("int4", 64), ("int4", 128), ("int8", 128)])
def test_awq_beats_rtn_on_planted_outlier_channels(scheme, group):
    """Four input channels 30x larger than the rest: AWQ's output error against float32 must be
    clearly below RTN's (on held-out activations, not only the calibration ones)."""
    spec = QuantSpec(scheme, group, "awq")
    x, w = _outlier_case()
    s, errors = search_scale(x[:256], [w], spec)
    held_out = x[256:]
    ref = held_out @ w.T
    rtn = (held_out @ torch.from_numpy(fake_quantize(w.T.numpy(), spec)) - ref).pow(2).mean().item()
    awq = ((held_out / s) @ torch.from_numpy(fake_quantize((w * s).T.numpy(), spec)) - ref).pow(2).mean().item()
    print(f"\n{scheme} g{group}: output MSE vs float32 RTN {rtn:.3e}  AWQ {awq:.3e}  ratio {awq / rtn:.3f}  "
          f"alpha {errors['alpha']:.2f}")
    assert errors["awq"] <= errors["rtn"]
    assert awq < 0.5 * rtn


def test_awq_scaling_is_exact_before_rounding():
    """Folding 1/s into the norms and v/up rows leaves the float layer unchanged."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4)
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(cfg, 0).eval()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    x = torch.randn(1, 10, 64)
    rope = LlamaRotaryEmbedding(cfg)
    pos = torch.arange(10)[None]
    emb = rope(x, pos)
    mask = torch.full((10, 10), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        before = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=emb)
        weights = {k: v.detach().clone() for k, v in layer.named_parameters()}
        captured = {key: torch.randn(32, dim).abs() + 0.1 for key, dim in
                    (("qkv", 64), ("o", 64), ("gate_up", 64), ("down", 128))}
        scaled, report = apply_awq(weights, captured, QuantSpec("int4", 64, "awq"), gqa=False)
        assert set(report) == {"qkv", "o", "gate_up", "down"}
        for name, p in layer.named_parameters():
            p.copy_(scaled[name])
        after = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=emb)
    before = before[0] if isinstance(before, tuple) else before
    after = after[0] if isinstance(after, tuple) else after
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_int4_shorter_last_block():
    """K = 160 with groups of 64: blocks of 64, 64 and 32 rows (ONNX Runtime only; TensorRT
    needs whole blocks and the export refuses it for engines)."""
    w = np.random.default_rng(3).standard_normal((160, 5)).astype(np.float32)
    q, scale = quantize_int4(w, 64, "float32")
    assert q.shape == (160, 5) and scale.shape == (3, 5)
    np.testing.assert_allclose(scale[2], np.abs(w[128:]).max(axis=0) / 7, rtol=1e-6)
    assert np.all(np.abs(dequantize(q, scale, "int4", 64) - w) <= np.repeat(scale, 64, axis=0)[:160] / 2 + 1e-6)
