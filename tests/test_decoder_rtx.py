"""Ahead-of-time TensorRT-RTX build of the decoder graph (no GPU needed to build; running it
needs one, so only the build and its recorded I/O are checked here)."""
from __future__ import annotations

import pytest

from exporter.decoder_export import build_decoder_engine, export_decoder


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_rtx_builds_the_decoder_with_prefill_and_decode_profiles(tiny, tmp_path, precision):
    pytest.importorskip("tensorrt_rtx_bindings")
    from exporter.trt_compat import load_backend

    backend = load_backend("tensorrt-rtx")
    section = export_decoder(tiny, tmp_path, precision=precision, max_batch=2, max_input_len=640,
                             max_output_len=32, visual_tokens=64, progress=False,
                             kv_cache="concat")
    section = build_decoder_engine(backend, tmp_path, section, timing_cache=tmp_path / "timing.cache")
    engine = tmp_path / section.engine
    assert engine.is_file() and engine.stat().st_size > 100_000
    io = {t["name"]: t for t in section.engine_info["io"]}
    dt = "float16" if precision == "fp16" else "float32"
    assert io["input_ids"]["dtype"] == "int64" and io["logits"]["dtype"] == "float32"
    assert io["prompt_embedding_table"]["dtype"] == dt and io["present.1.value"]["dtype"] == dt
    assert io["logits"]["shape"] == [-1, section.vocab_size]
    prefill, decode = section.engine_info["profiles"]
    assert prefill["past_key_values.0.key"][2] == [2, 4, 0, 16]  # max: empty past
    assert decode["input_ids"][2] == [2, 1] and decode["attention_mask"][2] == [2, 672]
    assert section.engine_info["backend"] == "tensorrt-rtx"


@pytest.mark.parametrize("scheme", ["none", "int8", "int4"])
def test_rtx_builds_the_inplace_cache_decoder_fp16_int8_int4(tiny, tmp_path, scheme):
    """The default decoder (in-place cache: TensorScatter -> KV-cache update layer, opset 24) in
    fp16 and with int8 / int4 weight-only DequantizeLinear -> MatMul parses and builds ahead of
    time; the cache inputs and outputs have the static max_seq_len the update layer requires."""
    pytest.importorskip("tensorrt_rtx_bindings")
    from exporter.quantize import QuantSpec
    from exporter.trt_compat import load_backend

    backend = load_backend("tensorrt-rtx")
    section = export_decoder(tiny, tmp_path, precision="fp16", max_batch=2, max_input_len=640, max_output_len=32,
                             visual_tokens=64, progress=False, kv_cache="inplace", quant=QuantSpec(scheme, 64))
    section = build_decoder_engine(backend, tmp_path, section, timing_cache=None)
    assert (tmp_path / section.engine).stat().st_size > 100_000
    io = {t["name"]: t for t in section.engine_info["io"]}
    assert io["past_key_values.0.key"]["shape"] == [-1, 4, 672, 16] == io["present.0.key"]["shape"]
    assert io["present.1.value"]["dtype"] == "float16" and io["logits"]["dtype"] == "float32"
    prefill, decode = section.engine_info["profiles"]
    assert prefill["past_key_values.0.key"][2] == decode["past_key_values.0.key"][2] == [2, 4, 672, 16]
