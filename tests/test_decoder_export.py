"""Decoder ONNX (prompt table + KV cache) against the HF model on the tiny checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.decoder_export import export_decoder
from exporter.decoder_graph import io_names
from runtime.errors import UserError

K = 8


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    out = {}
    for precision in ("fp32", "fp16"):
        work = tmp_path_factory.mktemp(f"decoder-{precision}")
        section = export_decoder(tiny, work, precision=precision, max_batch=2, max_input_len=128,
                                 max_output_len=16, visual_tokens=K, progress=False, kv_cache="concat")
        out[precision] = (work, section)
    return out


def _session(work, section):
    import onnxruntime as ort

    return ort.InferenceSession(str(work / section.onnx), providers=["CPUExecutionProvider"])


def _case(vocab: int, hidden: int):
    """Two requests, left padding on the second, image tokens at different offsets."""
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(2 * K, hidden, generator=gen)
    lengths = (24, 19)
    ids = torch.zeros(2, 24, dtype=torch.long)
    mask = torch.zeros(2, 24, dtype=torch.long)
    for b, n in enumerate(lengths):
        row = torch.randint(5, vocab, (n,), generator=gen)
        row[3 : 3 + K] = vocab + b * K + torch.arange(K)  # fake ids, tasks = 0
        ids[b, 24 - n :] = row
        mask[b, 24 - n :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions, table


def _hf_embeds(model, ids, table, vocab):
    """The `inputs_embeds` path: the prompt-table lookup done in torch, outside the graph."""
    emb = model.model.language_model.embed_tokens(torch.where(ids >= vocab, 0, ids)).clone()
    emb[ids >= vocab] = table[ids[ids >= vocab] - vocab]
    return emb


def _run(sess, section, feeds, past):
    _, present = io_names(section.num_layers)
    outs = sess.run(["logits", *present], {**feeds, **past})
    names, _ = io_names(section.num_layers)
    return outs[0], dict(zip(names, outs[1:]))


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 3e-2)])
def test_prefill_and_8_decode_steps_match_hf(tiny, exported, precision, tol):
    work, section = exported[precision]
    sess = _session(work, section)
    model, vocab = tiny.model, section.vocab_size
    ids, mask, positions, table = _case(vocab, section.hidden_size)
    dt = np.float16 if precision == "fp16" else np.float32
    names, _ = io_names(section.num_layers)
    past = {n: np.zeros((2, section.num_kv_heads, 0, section.head_dim), dt) for n in names}
    common = {"prompt_embedding_table": table.numpy().astype(dt), "tasks": np.zeros(2, np.int64),
              "prompt_vocab_size": np.array([K], np.int64)}
    logits, past = _run(sess, section, {"input_ids": ids.numpy(), "position_ids": positions.numpy(),
                                        "attention_mask": mask.numpy(), **common}, past)
    with torch.no_grad():
        ref = model(inputs_embeds=_hf_embeds(model, ids, table, vocab), attention_mask=mask,
                    position_ids=positions, use_cache=True)
    assert logits.shape == (2, vocab) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref.logits[:, -1].numpy(), atol=tol, rtol=0)
    cache = ref.past_key_values
    for _ in range(8):
        token = torch.from_numpy(ref.logits[:, -1].argmax(-1).numpy())[:, None]
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        logits, past = _run(sess, section, {"input_ids": token.numpy(), "position_ids": positions.numpy(),
                                            "attention_mask": mask.numpy(), **common}, past)
        with torch.no_grad():
            ref = model(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True)
        cache = ref.past_key_values
        np.testing.assert_allclose(logits, ref.logits[:, -1].numpy(), atol=tol, rtol=0)
    assert next(iter(past.values())).shape[2] == 24 + 8


def test_tasks_select_rows_of_the_table(tiny, exported):
    """id -> table[id - vocab + task * K]: the same fake ids with task 1 read the second block."""
    work, section = exported["fp32"]
    sess = _session(work, section)
    vocab, hidden = section.vocab_size, section.hidden_size
    table = np.random.default_rng(0).standard_normal((2 * K, hidden)).astype(np.float32)
    ids = np.array([[1, 7] + list(range(vocab, vocab + K)) + [9, 10]], np.int64)
    names, _ = io_names(section.num_layers)
    past = {n: np.zeros((1, section.num_kv_heads, 0, section.head_dim), np.float32) for n in names}
    pos = np.arange(ids.shape[1])[None]
    feeds = {"input_ids": ids, "position_ids": pos, "attention_mask": np.ones_like(ids),
             "prompt_embedding_table": table, "prompt_vocab_size": np.array([K], np.int64)}
    task1, _ = _run(sess, section, {**feeds, "tasks": np.array([1], np.int64)}, past)
    shifted = ids.copy()
    shifted[shifted >= vocab] += K
    task0, _ = _run(sess, section, {**feeds, "input_ids": shifted, "tasks": np.array([0], np.int64)}, past)
    np.testing.assert_array_equal(task1, task0)
    with torch.no_grad():
        ref = tiny.model(inputs_embeds=_hf_embeds(tiny.model, torch.from_numpy(shifted), torch.from_numpy(table),
                                                  vocab)).logits[:, -1]
    np.testing.assert_allclose(task1, ref.numpy(), atol=1e-4, rtol=0)


def test_section_records_limits_and_contract(exported):
    work, section = exported["fp16"]
    assert (work / "decoder.onnx").is_file() and (work / "decoder.onnx.data").is_file()
    assert section.max_input_len == 128 and section.max_output_len == 16 and section.max_seq_len == 144
    assert section.dtype == "float16" and section.visual_tokens == K
    assert section.prompt_table["max_prompt_embedding_table_size"] == 2 * K
    assert len(section.profiles) == 2  # prefill, decode
    import onnx

    model = onnx.load(str(work / "decoder.onnx"), load_external_data=False)
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types["prompt_embedding_table"] == onnx.TensorProto.FLOAT16
    assert {o.name: o.type.tensor_type.elem_type for o in model.graph.output}["logits"] == onnx.TensorProto.FLOAT


def test_limits_are_validated(tiny, tmp_path):
    with pytest.raises(UserError, match="max-input-len"):
        export_decoder(tiny, tmp_path, precision="fp32", max_batch=1, max_input_len=64, max_output_len=8,
                       visual_tokens=64, progress=False, kv_cache="concat")


def test_random_language_is_built_in_the_target_dtype():
    from transformers import LlamaConfig

    from models.random_language import build_random_language

    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    a = build_random_language(cfg, torch.float16, seed=5)
    b = build_random_language(cfg, torch.float16, seed=5)
    params = dict(a.named_parameters())
    assert all(p.dtype == torch.float16 and p.device.type == "cpu" for p in params.values())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert params["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    assert 0.015 < params["model.layers.0.mlp.up_proj.weight"].float().std() < 0.025
    with torch.no_grad():
        out = a(input_ids=torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(out.logits).all()


def test_grouped_query_attention_matches_hf(tmp_path):
    """kv heads < heads (Mistral-style LLaVA-NeXT): the graph repeats K/V like HF's repeat_kv."""
    from types import SimpleNamespace

    import onnxruntime as ort
    from transformers import LlamaConfig

    from models.random_language import build_random_language

    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6)
    model = build_random_language(cfg, torch.float32, seed=1, std=0.2)
    loaded = SimpleNamespace(model=model, config=SimpleNamespace(text_config=cfg))
    section = export_decoder(loaded, tmp_path, precision="fp32", max_batch=1, max_input_len=32, max_output_len=4,
                             visual_tokens=2, progress=False, kv_cache="concat")
    sess = ort.InferenceSession(str(tmp_path / section.onnx), providers=["CPUExecutionProvider"])
    ids = torch.tensor([[5, 300, 301, 7, 9, 11]])
    table = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    names, _ = io_names(2)
    past = {n: np.zeros((1, 2, 0, 16), np.float32) for n in names}
    feeds = {"input_ids": ids.numpy(), "prompt_embedding_table": table.numpy(), "tasks": np.zeros(1, np.int64),
             "prompt_vocab_size": np.array([2]), "position_ids": np.arange(6)[None],
             "attention_mask": np.ones((1, 6), np.int64)}
    logits, present = _run(sess, section, feeds, past)
    emb = model.model.embed_tokens(torch.where(ids >= 300, 0, ids)).clone()
    emb[0, 1:3] = table
    with torch.no_grad():
        ref = model(inputs_embeds=emb).logits[:, -1]
    assert next(iter(present.values())).shape == (1, 2, 6, 16)
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4, rtol=0)
