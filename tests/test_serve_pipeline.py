"""What the server needs from the pipeline, on the tiny LLaVA-1.5 engine (ONNX Runtime): requests
with different sampling settings share one batch and each still gets exactly its tokens alone;
stop strings end a request (never streamed, text cut before them); a cancelled request leaves
the batch while the others go on unchanged; OpenAI-style chats instead of one prompt, and the
text prompt-aware pruning embeds; the incremental text rules on a hand-made tokenizer."""
from __future__ import annotations

import pytest

from fakes.engines import build_engine_dir
from runtime import Pipeline
from runtime.detokenize import RequestText, partial_stop
from runtime.errors import UserError

PROMPTS = ("what is in the picture?", "how many objects are on the table?", "describe the image")


@pytest.fixture(scope="module")
def pipe(engine):
    return Pipeline.from_dir(engine, backend="onnxruntime")


def _run(pipe, requests):
    stream = pipe.run(requests)
    chunks = list(stream)
    return stream.results, chunks


def test_mixed_sampling_in_one_batch_equals_each_alone(pipe, images):
    settings = [pipe.sampling(5), pipe.sampling(12, temperature=1.0, top_p=0.9, seed=3),
                pipe.sampling(8, temperature=0.7, seed=5)]
    requests = [pipe.prepare(images[b], PROMPTS[b], sampling=settings[b]) for b in range(3)]
    batch, chunks = _run(pipe, requests)
    for b in range(3):
        alone, _ = _run(pipe, [requests[b]])
        assert batch[b].token_ids == alone[0].token_ids and batch[b].text == alone[0].text
        assert batch[b].kept_indices == alone[0].kept_indices
        assert len(batch[b].token_ids) == settings[b].max_new_tokens or batch[b].finish_reason == "stop"
        # the streamed text of each request is its whole text; its last chunk carries its Generation
        assert "".join(c.text for c in chunks if c.request == b) == batch[b].text
        assert [c.generation for c in chunks if c.request == b][-1] == batch[b]
    # the same request through generate(): the public API agrees with run()
    same = pipe.generate(images[1], PROMPTS[1], max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    assert same.token_ids == batch[1].token_ids
    # a request ends at its own max_new_tokens: the 5-token one finished first, while the others went on
    first_done = next(c.request for c in chunks if c.generation is not None)
    assert first_done == 0


def test_stop_strings_end_a_request_and_are_never_shown(pipe, images):
    full = pipe.generate(images[0], PROMPTS[0], max_new_tokens=30, ignore_eos=True)
    text = full.text
    at = next(i for i in range(4, len(text) - 2) if text.find(text[i:i + 2]) == i and text[i:i + 2].strip())
    stop = text[at:at + 2]
    req = pipe.prepare(images[0], PROMPTS[0], sampling=pipe.sampling(30, ignore_eos=True, stop=["\x00never", stop]))
    (gen,), chunks = _run(pipe, [req])
    assert gen.finish_reason == "stop" and gen.text == text[:at]
    assert full.token_ids[:len(gen.token_ids)] == gen.token_ids and len(gen.token_ids) < 30
    assert pipe.inputs.decode(gen.token_ids).startswith(text[:at] + stop[0])  # the last token completed it
    assert "".join(c.text for c in chunks) == text[:at]
    # a stop string that never completes does not hold text back at the end
    req = pipe.prepare(images[0], PROMPTS[0], sampling=pipe.sampling(30, ignore_eos=True, stop=[text[-1] + "\x01"]))
    (gen,), chunks = _run(pipe, [req])
    assert gen.text == text and "".join(c.text for c in chunks) == text and gen.finish_reason == "length"


def test_cancelled_request_leaves_the_batch_and_the_others_go_on(pipe, images):
    requests = [pipe.prepare(images[b], PROMPTS[b], sampling=pipe.sampling(30, ignore_eos=True)) for b in range(3)]
    stream = pipe.run(requests)
    seen = 0
    batch_sizes = []
    for chunk in stream:
        batch_sizes.append(pipe.decoder.cache.shape[0])
        if chunk.request == 1 and chunk.token_ids:
            seen += len(chunk.token_ids)
            if seen >= 3:
                stream.cancel(1)
    got = stream.results
    assert got[1].finish_reason == "cancelled" and 3 <= len(got[1].token_ids) <= 4
    assert batch_sizes[0] == 3 and batch_sizes[-1] == 2  # its row left the decoder's KV cache
    for b in (0, 2):
        alone = pipe.generate(images[b], PROMPTS[b], max_new_tokens=30, ignore_eos=True)
        assert got[b].token_ids == alone.token_ids and got[b].finish_reason == "length"
    # when every request has ended, the step loop ends
    stream = pipe.run([pipe.prepare(images[0], PROMPTS[0], sampling=pipe.sampling(30, ignore_eos=True))])
    for chunk in stream:
        stream.cancel(0)
    (gen,) = stream.results
    assert gen.finish_reason == "cancelled" and len(gen.token_ids) <= 2 and len(gen.timings.decode_s) <= 1
    with pytest.raises(UserError, match="no request 3 in a batch of 1"):
        stream.cancel(3)


def test_concat_cache_decoder_drops_rows_too(tmp_path, images):
    engine = build_engine_dir(tmp_path, "hivtp", extra=("--kv-cache", "concat"))
    pipe = Pipeline.from_dir(engine, backend="onnxruntime")
    requests = [pipe.prepare(images[b], PROMPTS[b], sampling=pipe.sampling(n, ignore_eos=True))
                for b, n in enumerate((3, 10, 6))]
    results, _ = _run(pipe, requests)
    assert next(iter(pipe.decoder.past.values())).shape[0] == 1  # only the longest request is left
    for b, r in enumerate(requests):
        assert results[b].token_ids == _run(pipe, [r])[0][0].token_ids


def test_chat_messages(pipe, images):
    one_turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[0]}]}]
    chat = pipe.prepare(images[0], messages=one_turn)
    plain = pipe.prepare(images[0], PROMPTS[0])
    assert chat.chat_ids == plain.chat_ids and chat.pruning_text == plain.pruning_text == PROMPTS[0]
    assert _run(pipe, [chat])[0][0].token_ids == pipe.generate(images[0], PROMPTS[0]).token_ids

    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
             {"role": "assistant", "content": "a cat"},
             {"role": "user", "content": [{"type": "text", "text": "and its colour?"},
                                          {"type": "text", "text": "be brief"}]}]
    req = pipe.prepare(images[0], messages=turns)
    assert req.pruning_text == "and its colour?\nbe brief"  # the last user message's text
    text = pipe.inputs.prompts.chat_text(turns)
    assert text.count("<image>") == 1 and "ASSISTANT: a cat</s>" in text and text.endswith("ASSISTANT:")
    assert list(req.chat_ids) == pipe.inputs.prompts.chat_ids(turns)
    assert req.prompt_tokens == len(req.chat_ids) - 1 + 64
    (gen,), _ = _run(pipe, [req])
    assert gen.prompt_tokens == req.prompt_tokens

    for messages, match in [
        ([{"role": "user", "content": "no image"}], "exactly one image per request, the chat holds 0"),
        ([{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}], "the chat holds 2"),
        ([{"role": "assistant", "content": [{"type": "image"}]}, {"role": "user", "content": "hi"}],
         "must be in a user message"),
        ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "<image> twice"}]}],
         "exactly one image placeholder, found 2"),
        ([], "non-empty list of messages"),
    ]:
        with pytest.raises(UserError, match=match):
            pipe.prepare(images[0], messages=messages)
    with pytest.raises(UserError, match="either a prompt or a chat"):
        pipe.prepare(images[0], PROMPTS[0], messages=one_turn)


def test_prepare_refuses_what_cannot_run(pipe, images):
    with pytest.raises(UserError, match=r"the prompt is \d+ tokens \(64 image \+ \d+ text\), longer than the "
                                        r"engine's --max-input-len 700"):
        pipe.prepare(images[0], "word " * 700)
    with pytest.raises(UserError, match="--max-new-tokens 41 exceeds the engine's --max-output-len 40"):
        pipe.sampling(41)
    with pytest.raises(UserError, match="stop must be a string or a list of non-empty strings"):
        pipe.sampling(4, stop=[""])
    with pytest.raises(UserError, match="not a readable image"):
        pipe.prepare(b"not an image", PROMPTS[0])
    with pytest.raises(UserError, match="batch of 4 exceeds the engine's max batch 3"):
        pipe.run([pipe.prepare(images[0], PROMPTS[0])] * 4)


def test_prompt_aware_pruning_embeds_the_last_user_text(tmp_path_factory, images):
    pipe = Pipeline.from_dir(build_engine_dir(tmp_path_factory.getbasetemp() / "engines", "hiprune++"),
                             backend="onnxruntime")
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[1]}]},
             {"role": "assistant", "content": "three"},
             {"role": "user", "content": PROMPTS[2]}]
    (chat,), _ = _run(pipe, [pipe.prepare(images[0], messages=turns, sampling=pipe.sampling(2))])
    assert chat.kept_indices == pipe.generate(images[0], PROMPTS[2], max_new_tokens=2).kept_indices
    assert chat.kept_indices != pipe.generate(images[0], PROMPTS[1], max_new_tokens=2).kept_indices


# ---- incremental text -------------------------------------------------------------------------
PIECES = {1: b"ab", 2: b"c", 3: "\u00e9".encode()[:1], 4: "\u00e9".encode()[1:], 5: b"XY", 6: b"Z", 9: b""}


def _decode(ids):
    return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


def test_request_text_rules():
    text = RequestText(_decode, eos=9)
    assert [text.add(t) for t in (1, 3, 4, 2)] == ["ab", "", "\u00e9", "c"]
    assert text.take_pending() == (1, 3, 4, 2) and text.take_pending() == ()
    text = RequestText(_decode, eos=9, stops=("cXY",))
    assert [text.add(t) for t in (1, 2, 5)] == ["ab", "", ""]  # "c" held back, then "cXY" completed
    assert text.stopped and text.text() == "ab" and text.flush() == ""
    text = RequestText(_decode, eos=9, stops=("cXZ",))
    assert [text.add(t) for t in (1, 2, 5)] == ["ab", "", "cXY"]  # "cXY" is not a beginning of "cXZ"
    assert not text.stopped
    text = RequestText(_decode, eos=9, stops=("cQ",))
    assert [text.add(t) for t in (1, 2)] == ["ab", ""] and text.flush() == "c"  # held back until the end
    assert text.add(9) == "" and text.tokens[-1] == 9  # end of sequence adds no text
    text = RequestText(_decode, eos=9, stops=("cXY!",))
    assert [text.add(t) for t in (1, 2, 3, 4, 5)] == ["ab", "", "", "c\u00e9", "XY"]  # "c" could start it, "cé" cannot
    assert partial_stop("abcX", ["XYZ", "cXQ"]) == 2 and partial_stop("abc", ["XYZ"]) == 0
