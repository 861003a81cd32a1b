"""The TensorRT-LLM adapter against the recording stand-in in tests/fakes/tensorrt_llm: exact
arguments, and the same tokens as our own decoder graph (the stand-in runs the prompt-table
lookup the way TensorRT-LLM does, from the arguments it was given)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.errors import UserError
from runtime import Pipeline

FAKES = Path(__file__).parent / "fakes"
PROMPTS = ["what is in the picture?", "how many objects are on the table?", "describe the image"]


def _fake_trtllm_dir(root: Path, engine: str, table_size: int) -> Path:
    dec = json.loads((Path(engine) / "config.json").read_text())["decoder"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({
        "pretrained_config": {"architecture": "LlamaForCausalLM", "vocab_size": dec["vocab_size"],
                              "hidden_size": dec["hidden_size"], "num_hidden_layers": dec["num_layers"],
                              "num_key_value_heads": dec["num_kv_heads"], "dtype": dec["dtype"]},
        "build_config": {"max_batch_size": 3, "max_input_len": 700, "max_prompt_embedding_table_size": table_size},
        "edgeprune_decoder_onnx": str(Path(engine) / dec["onnx"]), "edgeprune_head_dim": dec["head_dim"],
    }))
    return root


@pytest.fixture
def fake_trtllm(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    for name in [m for m in sys.modules if m.startswith("tensorrt_llm")]:
        monkeypatch.delitem(sys.modules, name)
    import tensorrt_llm

    tensorrt_llm.CALLS.clear()
    yield tensorrt_llm
    for name in [m for m in sys.modules if m.startswith("tensorrt_llm")]:
        monkeypatch.delitem(sys.modules, name)


def test_adapter_arguments_and_tokens_match_our_decoder(engine, images, fake_trtllm, tmp_path):
    trtllm_dir = _fake_trtllm_dir(tmp_path / "trtllm", engine, table_size=3 * 64)
    ours = Pipeline.from_dir(engine, backend="onnxruntime")
    theirs = Pipeline.from_dir(engine, backend="onnxruntime", trtllm_engine_dir=trtllm_dir)
    expected = ours.generate(images, PROMPTS, max_new_tokens=12)
    got = theirs.generate(images, PROMPTS, max_new_tokens=12)
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    assert [g.text for g in got] == [e.text for e in expected]

    (name, init), (gen_name, call) = fake_trtllm.CALLS
    assert name == "ModelRunnerCpp.from_dir" and init == {"engine_dir": str(trtllm_dir), "rank": 0}
    assert gen_name == "ModelRunnerCpp.generate"
    vocab, k = ours.engine.decoder.vocab_size, 64
    for b, ids in enumerate(call["batch_input_ids"]):
        assert ids.dtype == torch.int32
        expect = ours.inputs.prompt_ids(PROMPTS[b], b, k)
        assert ids.tolist() == expect
        fake = ids[ids >= vocab]
        assert fake.tolist() == list(range(vocab + b * k, vocab + (b + 1) * k))
    assert call["prompt_tasks"] == "0,0,0"
    assert tuple(call["prompt_table"].shape) == (3, k, ours.engine.decoder.hidden_size)
    feats = ours.vision(ours.inputs.pixel_values(images, ours.vision.input_dtype)).features
    np.testing.assert_array_equal(call["prompt_table"].numpy(), feats)
    assert call["max_new_tokens"] == 12 and call["top_k"] == 1 and call["temperature"] is None
    assert call["end_id"] == ours.inputs.eos_token_id and call["pad_id"] == ours.inputs.pad_token_id
    assert call["return_dict"] and call["output_sequence_lengths"]


def test_small_prompt_table_is_refused(engine, fake_trtllm, tmp_path):
    trtllm_dir = _fake_trtllm_dir(tmp_path / "small", engine, table_size=32)
    with pytest.raises(UserError, match="max_prompt_embedding_table_size 32"):
        Pipeline.from_dir(engine, backend="onnxruntime", trtllm_engine_dir=trtllm_dir)


def test_missing_tensorrt_llm_names_the_package(engine, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import -> ImportError
    with pytest.raises(UserError, match="tensorrt_llm.*pip install tensorrt_llm"):
        Pipeline.from_dir(engine, backend="onnxruntime", trtllm_engine_dir=tmp_path)
