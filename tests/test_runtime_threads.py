"""One Pipeline shared by threads (a robot's perception and planning loops, a server's workers):
concurrent calls run one after another, and every answer equals its sequential answer."""
from __future__ import annotations

import threading

from runtime import Pipeline

PROMPTS = ["what is in the picture?", "how many objects are on the table?", "describe the image",
           "where is the cup?"]


def test_eight_threads_get_their_sequential_answers(engine, images):
    pipe = Pipeline.from_dir(engine, backend="onnxruntime")
    jobs = [(images[i % 3], PROMPTS[i % 4], i % 2) for i in range(8)]  # different images, prompts, stream or not
    want = [pipe.generate(image, prompt, max_new_tokens=8).token_ids for image, prompt, _ in jobs]
    got: list = [None] * len(jobs)
    errors: list = []
    start = threading.Barrier(len(jobs))

    def work(i, image, prompt, streamed):
        try:
            start.wait()
            if streamed:
                stream = pipe.stream(image, prompt, max_new_tokens=8)
                "".join(chunk.text for chunk in stream)
                got[i] = stream.results[0].token_ids
            else:
                got[i] = pipe.generate(image, prompt, max_new_tokens=8).token_ids
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert got == want


def test_one_shot_pools_stop_spinning_when_their_run_returns(engine):
    """The vision graph runs once per request and the decoder's prefill follows on the same
    cores: its pool spins during its own run but must stop the moment the run returns
    (runtime/backends/onnxruntime.py ONE_SHOT); the decoder's steps follow each other, so its
    pool keeps ONNX Runtime's default (spinning between steps)."""
    pipe = Pipeline.from_dir(engine, backend="onnxruntime")

    def entry(session, key: str) -> str | None:
        try:
            return session.get_session_options().get_session_config_entry(key)
        except RuntimeError:  # not set: ONNX Runtime's default
            return None

    assert entry(pipe.vision.session, "session.intra_op.allow_spinning") == "1"
    assert entry(pipe.vision.session, "session.force_spinning_stop") == "1"
    assert entry(pipe.decoder.session, "session.intra_op.allow_spinning") is None
    assert entry(pipe.decoder.session, "session.force_spinning_stop") is None
