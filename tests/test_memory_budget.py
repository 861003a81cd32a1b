"""The per-engine memory estimate against hand-computed LLaVA-1.5-7B numbers."""
from __future__ import annotations

from dataclasses import replace

from exporter.memory_budget import GIB, MODULES, estimate, kv_cache_bytes, warn_if_too_big
from fakes.configs import decoder_section, engine_config

SEVEN_B = engine_config(vision={"onnx_files": []}, decoder=decoder_section())


def test_kv_cache_bytes_of_7b():
    assert kv_cache_bytes(SEVEN_B.decoder) == 2 * 32 * 4096 * 2048 * 2 == GIB  # 0.5 MiB per token
    assert kv_cache_bytes(replace(SEVEN_B.decoder, kv_cache="concat")) == 2 * GIB  # past + grown present


def test_a_7b_int4_decoder_fits_orin_nano_but_fp16_does_not(tmp_path):
    lines = []
    data = tmp_path / "decoder.onnx.data"
    with open(data, "wb") as f:  # sparse file of the int4 7B decoder's size
        f.truncate(int(3.9e9))
    config = SEVEN_B
    e = estimate(tmp_path, config)
    assert e["parts"]["decoder_weights"] == int(3.9e9) and e["parts"]["kv_cache"] == GIB
    assert 4.5 < e["total"] / GIB < 5.2  # 3.63 weights + 1.0 KV + ~0.35 activations
    assert e["fits"]["Orin NX 16GB"] and e["fits"]["Orin Nano 8GB"]
    with open(data, "wb") as f:
        f.truncate(int(13.5e9))
    assert not warn_if_too_big(tmp_path, config, "orin-nano", lines.append)
    assert lines[-1].startswith("warning: these engines need ~13.92 GiB but Orin Nano 8GB has ~5.5 GiB")
    assert warn_if_too_big(tmp_path, config, "agx-orin", lines.append)
    assert [m.key for m in MODULES] == ["orin-nano", "orin-nx", "agx-orin", "agx-orin-64"]
