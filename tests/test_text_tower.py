"""The CLIP text tower exported for HiPrune++ (text.onnx + text_tokenizer/) and the one prompt
embedding rule every backend shares: 77-token chunks, projected embeddings averaged, then
L2-normalised. ONNX Runtime must match the HF text model on the tiny tower within 1e-5."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes.configs import engine_config
from runtime.backends import provider
from runtime.contract import EngineDir, TensorSpec, to_json
from runtime.errors import UserError
from runtime.text_embeds import TextEmbedder, chunk_ids

SHORT = "what is in the picture?"
SHORT_IDS = [91, 76, 274, 340, 335, 273, 343, 88, 89, 266, 35]  # the tiny tokenizer's, fixed by its seed
LONG = " ".join(["the red cup is on the table near the robot arm"] * 10)  # 201 tokens: 3 chunks


@pytest.fixture(scope="module")
def text_dir(tiny, tmp_path_factory):
    """An engine directory holding only the text tower export (enough for TextEmbedder)."""
    from exporter.text_tower_export import export_text_tower

    root = tmp_path_factory.mktemp("text")
    section = export_text_tower(tiny, root)
    return EngineDir(Path(root), engine_config(text=to_json(section)))


@pytest.fixture(scope="module")
def tower(tiny):
    from exporter.text_tower_export import load_text_tower

    return load_text_tower(tiny)[0]


def _embedder(engine: EngineDir, backend: str) -> TextEmbedder:
    return TextEmbedder.for_backend(engine, provider(backend))


def _torch_embeds(tower, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tower(input_ids=torch.from_numpy(ids)).text_embeds.numpy()


def test_section_describes_the_graph(text_dir):
    s = text_dir.config.text
    assert (s.onnx, s.tokenizer, s.context_length, s.max_chunks) == ("text.onnx", "text_tokenizer", 77, 8)
    assert s.inputs == [TensorSpec("input_ids", [-1, 77], "int64")]
    assert s.outputs == [TensorSpec("text_embeds", [-1, 32], "float32")]
    assert s.source.endswith("clip") and s.embed_dim == 32
    assert (s.bos_token_id, s.eos_token_id, s.pad_token_id) == (1, 2, 2)
    import onnx

    from exporter.onnx_export import ONNX_IR_VERSION, ONNX_OPSET

    model = onnx.load(str(text_dir.path / "text.onnx"))
    assert model.ir_version == ONNX_IR_VERSION and model.opset_import[0].version == ONNX_OPSET
    assert (text_dir.path / "text_tokenizer" / "tokenizer.json").is_file()


def test_chunk_ids_for_a_short_prompt(text_dir):
    embedder = _embedder(text_dir, "onnxruntime")
    ids = embedder.chunks(SHORT)
    assert ids.dtype == np.int64 and ids.shape == (1, 77)
    assert ids[0].tolist() == [1, *SHORT_IDS, 2] + [2] * (77 - len(SHORT_IDS) - 2)
    assert embedder.chunks("")[0].tolist() == [1, 2] + [2] * 75


class _CountingTokenizer:
    """'n' -> ids 10 .. 10+n-1: chunk boundaries without a vocabulary."""

    def encode(self, prompt, add_special_tokens=True):
        return list(range(10, 10 + int(prompt)))


@pytest.mark.parametrize("n", [0, 1, 74, 75, 76, 150, 151, 200])
def test_long_prompts_give_ceil_n_over_75_chunks(n):
    ids = chunk_ids(_CountingTokenizer(), str(n), bos=1, eos=2, pad=0)
    assert ids.shape == (max(1, math.ceil(n / 75)), 77)
    flat = []
    for row in ids.tolist():
        end = row.index(2)
        assert row[0] == 1 and all(t == 0 for t in row[end + 1:])
        flat += row[1:end]
    assert flat == list(range(10, 10 + n))


@pytest.mark.parametrize("prompt", [SHORT, LONG])
def test_onnx_matches_the_torch_text_model(text_dir, tower, prompt):
    embedder = _embedder(text_dir, "onnxruntime")
    ids = embedder.chunks(prompt)
    if prompt == LONG:
        assert ids.shape[0] == 3
    np.testing.assert_allclose(embedder.chunk_embeds(prompt), _torch_embeds(tower, ids), atol=1e-5, rtol=0)


def test_padding_after_eos_does_not_change_the_embedding(text_dir, tower):
    ids = _embedder(text_dir, "onnxruntime").chunks(SHORT)
    end = len(SHORT_IDS) + 2
    np.testing.assert_allclose(_torch_embeds(tower, ids), _torch_embeds(tower, ids[:, :end]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("eos", [2, 7])  # HF's two pooling rules: legacy argmax (eos 2) and first EOS
def test_eos_padding_is_invisible_under_both_pooling_rules(eos):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=16, bos_token_id=1, eos_token_id=eos, pad_token_id=eos,
    )).eval()
    tok = _CountingTokenizer()
    for n in (0, 5):
        ids = chunk_ids(tok, str(n), bos=1, eos=eos, pad=eos)
        np.testing.assert_allclose(_torch_embeds(model, ids), _torch_embeds(model, ids[:, :n + 2]), atol=1e-6)


def test_prompt_embedding_is_the_normalised_chunk_mean(text_dir, tower):
    ref = _embedder(text_dir, "torch")
    ort = _embedder(text_dir, "onnxruntime")
    prompts = [LONG, SHORT, ""]
    got = ref(prompts)
    for row, prompt in zip(got, prompts):
        mean = _torch_embeds(tower, ref.chunks(prompt)).mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6, rtol=0)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1)
    np.testing.assert_allclose(ort(prompts), got, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ort(prompts)[1], ort([SHORT])[0])  # a batch equals its requests alone


def test_too_many_chunks_is_a_user_error(text_dir):
    with pytest.raises(UserError, match="at most 8"):
        _embedder(text_dir, "onnxruntime")(" ".join(["red cup"] * 400))


def test_engine_dir_without_text_section_asks_for_a_rebuild(tmp_path_factory):
    from dataclasses import replace

    from fakes.engines import build_engine_dir
    from runtime.contract import open_engine_dir

    engine = open_engine_dir(build_engine_dir(tmp_path_factory.getbasetemp() / "engines", "hiprune++"))
    assert engine.config.text.onnx == "text.onnx" and (engine.path / "text.onnx").is_file()
    old = EngineDir(engine.path, replace(engine.config, text=None))
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(UserError, match="rebuild it with this release"):
            parts = provider(backend)
            assert parts.vision(old).takes_text  # the graph still takes the prompt
            TextEmbedder.for_backend(old, parts)


def test_inspect_shows_the_text_tower(tmp_path_factory, capsys):
    from exporter.cli import main
    from fakes.engines import build_engine_dir

    path = build_engine_dir(tmp_path_factory.getbasetemp() / "engines", "hiprune++")
    assert main(["inspect", path]) == 0
    assert "text       text.onnx  input_ids [-1, 77] int64 -> text_embeds [-1, 32]" in capsys.readouterr().out
