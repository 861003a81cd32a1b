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
                             max_output_len=32, visual_tokens=64, progress=False)
    section = build_decoder_engine(backend, tmp_path, section, timing_cache=tmp_path / "timing.cache")
    engine = tmp_path / section["engine"]
    assert engine.is_file() and engine.stat().st_size > 100_000
    io = {t["name"]: t for t in section["engine_info"]["io"]}
    dt = "float16" if precision == "fp16" else "float32"
    assert io["input_ids"]["dtype"] == "int64" and io["logits"]["dtype"] == "float32"
    assert io["prompt_embedding_table"]["dtype"] == dt and io["present.1.value"]["dtype"] == dt
    assert io["logits"]["shape"] == [-1, section["vocab_size"]]
    prefill, decode = section["engine_info"]["profiles"]
    assert prefill["past_key_values.0.key"][2] == [2, 4, 0, 16]  # max: empty past
    assert decode["input_ids"][2] == [2, 1] and decode["attention_mask"][2] == [2, 672]
    assert section["engine_info"]["backend"] == "tensorrt-rtx"
