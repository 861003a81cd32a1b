"""End to end on the tiny model (hiprune++ reads the prompt through the CLIP text tower exported
into the engine dir as text.onnx): `python -m exporter build` engine dirs, then the runtime's
onnxruntime and torch backends must give identical kept indices and greedy token ids, for
single requests and for a batch of three different images (each equal to its batch of one)."""
from __future__ import annotations

import pytest

from fakes.engines import build_engine_dir, write_images
from runtime import Pipeline

METHODS = ("none", "hivtp", "hiprune", "hiprune++")
PROMPTS = ("what is in the picture?", "how many objects are on the table?", "describe the image")
NEW_TOKENS = 32


@pytest.fixture(scope="session")
def engine_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "engines"


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.getbasetemp() / "images")


@pytest.mark.parametrize("method", METHODS)
def test_onnxruntime_equals_torch_single_and_batch(method, engine_root, images):
    engine = build_engine_dir(engine_root, method)
    ort = Pipeline.from_dir(engine, backend="onnxruntime")
    ref = Pipeline.from_dir(engine, backend="torch")
    if method == "hiprune++":  # the prompt goes through text.onnx here, the HF CLIP text model there
        assert (ort.text.backend, ref.text.backend) == ("onnxruntime", "torch")

    single_ort = ort.generate(images[0], PROMPTS[0], max_new_tokens=NEW_TOKENS)
    single_ref = ref.generate(images[0], PROMPTS[0], max_new_tokens=NEW_TOKENS)
    assert single_ort.kept_indices == single_ref.kept_indices
    assert len(single_ort.kept_indices) == {"none": 576, "hiprune++": 65}.get(method, 64)
    assert single_ort.token_ids == single_ref.token_ids
    assert len(single_ort.token_ids) == NEW_TOKENS or single_ort.token_ids[-1] == ort.inputs.eos_token_id

    batch_ort = ort.generate(images, list(PROMPTS), max_new_tokens=NEW_TOKENS)
    batch_ref = ref.generate(images, list(PROMPTS), max_new_tokens=NEW_TOKENS)
    for b in range(3):
        assert batch_ort[b].kept_indices == batch_ref[b].kept_indices
        assert batch_ort[b].token_ids == batch_ref[b].token_ids
        alone = ort.generate(images[b], PROMPTS[b], max_new_tokens=NEW_TOKENS)
        assert batch_ort[b].token_ids == alone.token_ids
        assert batch_ort[b].kept_indices == alone.kept_indices
        assert batch_ort[b].text == alone.text
    if method != "none":  # pruning picks different patches for different images
        assert len({tuple(g.kept_indices) for g in batch_ort}) == 3


def test_streaming_yields_the_same_text(engine_root, images):
    pipe = Pipeline.from_dir(build_engine_dir(engine_root, "hivtp"), backend="onnxruntime")
    full = pipe.generate(images[1], PROMPTS[1], max_new_tokens=12)
    stream = pipe.stream(images[1], PROMPTS[1], max_new_tokens=12)
    chunks = [chunk.text for chunk in stream]
    assert "".join(chunks) == full.text
    assert stream.results[0].token_ids == full.token_ids


def test_sampling_is_seeded_and_differs_from_greedy(engine_root, images):
    pipe = Pipeline.from_dir(build_engine_dir(engine_root, "hivtp"), backend="onnxruntime")
    a = pipe.generate(images[0], PROMPTS[0], max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3)
    b = pipe.generate(images[0], PROMPTS[0], max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3)
    greedy = pipe.generate(images[0], PROMPTS[0], max_new_tokens=16)
    assert a.token_ids == b.token_ids
    assert a.token_ids != greedy.token_ids
    assert all(0 <= t < pipe.engine.decoder.vocab_size for t in a.token_ids)
    batch = pipe.generate([images[2], images[0]], ["describe the image", PROMPTS[0]], max_new_tokens=16,
                          temperature=1.0, top_p=0.9, seed=3)
    assert batch[1].token_ids == a.token_ids  # per-request generators: batch == alone
