"""The FLOP model behind scripts/bench_ttft.py reproduces MODELS.md's LLaVA-1.5-7B numbers, and
the scaled-down CPU model keeps 7B's vision/LLM balance."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_ttft.py"


@pytest.fixture(scope="module")
def bt():
    spec = importlib.util.spec_from_file_location("bench_ttft", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from models.specs import SPECS

    module.register_scaled_spec()
    yield module
    SPECS.pop(module.SCALED, None)  # other tests enumerate the known models


def _config(name):
    from models.specs import SPECS, llava_config

    return llava_config(SPECS[name])


def test_flops_match_models_md(bt):
    c = _config("llava-1.5-7b")
    assert bt.llm_token_flops(c.text_config) / 1e9 == pytest.approx(12.95, rel=0.01)
    assert bt.prefill_flops(c.text_config, 576 + 60) / 1e12 == pytest.approx(8.45, rel=0.01)
    assert bt.prefill_flops(c.text_config, 128 + 60) / 1e12 == pytest.approx(2.45, rel=0.01)
    assert bt.vision_flops(c.vision_config, 4096, 576) / 1e9 == pytest.approx(382, rel=0.03)
    assert bt.ttft_flops(c, 128, 60) / bt.ttft_flops(c, 576, 60) == pytest.approx(0.32, abs=0.01)


def test_scaled_model_keeps_the_7b_balance(bt):
    scaled, big = bt.balance(_config(bt.SCALED), 36), bt.balance(_config("llava-1.5-7b"), 36)
    assert scaled["vision_in_llm_tokens"] == pytest.approx(big["vision_in_llm_tokens"], rel=0.15)
    assert scaled["ideal_ttft_ratio_k128"] == pytest.approx(big["ideal_ttft_ratio_k128"], rel=0.05)
