"""`python -m runtime serve` as a real process on loopback, driven by the official `openai`
client and by raw HTTP: completions equal `Pipeline.generate` token for token (LLaVA-1.5 and
LLaVA-NeXT), 32 concurrent streams each equal their single answer, every bad input gets its
OpenAI-style error and status while the server keeps answering, a flood fills the queue (503 +
Retry-After), deadlines and disconnected clients stop costing decode steps, memory stays flat
over 500 requests, and the server process never imports torch."""
from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fakes.engines import build_engine_dir, build_next_engine_dir
from fakes.http import chat, connection, data_url, request, write_blocky_images
from runtime import Pipeline
from runtime.serve.process import ServerProcess

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("what is in the picture?", "how many objects are on the table?", "describe the image",
           "is the path clear?", "where is the red box?", "count the cups", "what colour is the wall?", "hi")
MAX_OUTPUT = 300
MAX_IMAGE_BYTES = 300_000


@pytest.fixture(scope="module")
def serve_engine(tmp_path_factory):
    """hivtp K=64, max batch 4, room for long answers (the disconnect and deadline tests)."""
    return build_engine_dir(tmp_path_factory.getbasetemp() / "serve-engines", "hivtp", max_batch=4,
                            extra=("--max-output-len", str(MAX_OUTPUT)))


@pytest.fixture(scope="module")
def pipe(serve_engine):
    return Pipeline.from_dir(serve_engine, backend="onnxruntime")


@pytest.fixture(scope="module")
def allowed(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("allowed")
    (folder / "ok.png").write_bytes(Path(images[1]).read_bytes())
    return folder


@pytest.fixture(scope="module")
def server(serve_engine, allowed, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(serve_engine, "--max-image-bytes", str(MAX_IMAGE_BYTES), "--allow-files", str(allowed),
                       "--batch-window-ms", "20", log_path=log, cwd=ROOT) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _model(server) -> str:
    return request(server.url, "GET", "/v1/models")[2]["data"][0]["id"]


def _streamed(client, model, image, prompt, **kw):
    """(text, the final chunk's edgeprune facts, usage) of one streamed completion."""
    parts, facts, use, reasons = [], None, None, []
    for chunk in client.chat.completions.create(model=model, stream=True, stream_options={"include_usage": True},
                                                messages=chat(data_url(image), prompt)["messages"], **kw):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)
            facts = (chunk.model_extra or {}).get("edgeprune") or facts
        if chunk.usage is not None:
            use = chunk.usage
    assert reasons[-1] in ("stop", "length") and not any(reasons[:-1])
    return "".join(parts), facts, use


def _assert_same(client, model, pipe, image, prompt, max_tokens=12, **sampling):
    want = pipe.generate(image, prompt, max_new_tokens=max_tokens, **sampling)
    r = client.chat.completions.create(model=model, messages=chat(data_url(image), prompt)["messages"],
                                       max_tokens=max_tokens, **{"temperature": 0, **sampling})
    facts = r.model_extra["edgeprune"]
    assert r.choices[0].message.content == want.text
    kept = want.kept_indices
    assert facts["token_ids"] == want.token_ids
    assert facts["kept_tokens"] == (sum(map(len, kept)) if isinstance(kept[0], list) else len(kept))
    assert r.choices[0].finish_reason == want.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, len(want.token_ids))
    text, facts, use = _streamed(client, model, image, prompt, max_tokens=max_tokens, **{"temperature": 0, **sampling})
    assert text == want.text and facts["token_ids"] == want.token_ids
    assert (use.prompt_tokens, use.completion_tokens) == (want.prompt_tokens, len(want.token_ids))
    return facts


def test_completions_equal_the_pipeline(server, client, pipe, images):
    model = _model(server)
    assert [m.id for m in client.models.list().data] == [model] == [Path(pipe.engine.path).name]
    for b in range(3):
        facts = _assert_same(client, model, pipe, images[b], PROMPTS[b])
        assert (facts["method"], facts["keep"], facts["visual_tokens"], facts["kept_tokens"]) == ("hivtp", 64, 64, 64)
        assert facts["ttft_s"] >= facts["engine_ttft_s"] > 0
    _assert_same(client, model, pipe, images[0], PROMPTS[0], temperature=0.8, top_p=0.9, seed=7)
    # stop strings: the text ends before the first one
    full = pipe.generate(images[2], PROMPTS[2], max_new_tokens=20).text
    stop = full[6:8]
    r = client.chat.completions.create(model=model, messages=chat(data_url(images[2]), PROMPTS[2])["messages"],
                                       max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].message.content == full[: full.find(stop)] and r.choices[0].finish_reason == "stop"
    health = request(server.url, "GET", "/health")
    assert health[0] == 200 and health[2]["status"] == "ok"
    log = server.log()
    assert re.search(r"POST /v1/chat/completions 200 [\d.]+ms prompt_tokens=\d+ completion_tokens=\d+ ttft_ms=", log)
    assert "stream=true" in log


def test_llava_next_engine_serves_the_same_way(tmp_path_factory, images, tmp_path):
    engine = build_next_engine_dir(tmp_path_factory.getbasetemp() / "engines", "hivtp", 640)
    pipe = Pipeline.from_dir(engine, backend="onnxruntime")
    with ServerProcess(engine, log_path=tmp_path / "next.log", cwd=ROOT) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        model = _model(srv)
        counts = set()
        for b in (1, 2):  # two aspect ratios: different layouts, different token counts
            facts = _assert_same(client, model, pipe, images[b], PROMPTS[b], max_tokens=8)
            assert facts["visual_tokens"] == facts["kept_tokens"] and facts["keep"] == 640
            counts.add(facts["visual_tokens"])
        assert len(counts) == 2


def test_32_concurrent_streams_each_equal_their_single_answer(server, client, pipe, tmp_path):
    model = _model(server)
    paths = write_blocky_images(tmp_path / "load", 32)
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda i: _streamed(client, model, paths[i], prompts[i], max_tokens=8, temperature=0),
                            range(32)))
    for i, (text, facts, use) in enumerate(got):
        want = pipe.generate(paths[i], prompts[i], max_new_tokens=8)
        assert text == want.text and facts["token_ids"] == want.token_ids, i
    sizes = [facts["batch_size"] for _, facts, _ in got]
    assert max(sizes) == 4 and request(server.url, "GET", "/health")[2]["largest_batch"] == 4


def _error(status, body, code=None):
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]["message"]


def test_bad_inputs_get_openai_errors_and_the_server_goes_on(server, images, allowed, tmp_path):
    url = server.url
    good = data_url(images[0])
    model = _model(server)
    huge = tmp_path / "huge.png"
    _noise_png(huge, MAX_IMAGE_BYTES)
    two = chat(good, "hi")
    two["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": good}})
    assistant_image = chat(good, "hi")
    assistant_image["messages"].insert(0, {"role": "assistant", "content": [{"type": "image_url",
                                                                           "image_url": {"url": good}}]})
    cases = [
        (b"{not json", 400, "invalid_json", "not valid JSON"),
        (b"[1, 2]", 400, None, "must be a JSON object"),
        ({"model": model}, 400, None, "messages must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "no image"}]}, 400, "image_count", "exactly one image"),
        (two, 400, "image_count", "the messages hold 2"),
        (assistant_image, 400, None, "user messages only"),
        (chat("data:text/plain;base64,aGVsbG8=", "hi"), 400, "invalid_image", "not an image"),
        (chat("data:image/png;base64,@@@", "hi"), 400, "invalid_image", "not valid base64"),
        (chat("data:image/png;base64," + base64.b64encode(b"GIF89a garbage").decode(), "hi"), 400, None,
         "not a readable image"),
        (chat(data_url(huge), "hi"), 413, "image_too_large", f"--max-image-bytes {MAX_IMAGE_BYTES}"),
        (chat(good, "hi", max_tokens=MAX_OUTPUT + 1), 400, "max_tokens_too_large",
         f"max_tokens {MAX_OUTPUT + 1} exceeds the engine's --max-output-len {MAX_OUTPUT}"),
        (chat(good, "hi", model="gpt-4o"), 404, "model_not_found", "'gpt-4o' does not exist"),
        (chat(good, "word " * 800), 400, None, "longer than the engine's --max-input-len 700"),
        (chat("http://127.0.0.1:9/cat.png", "hi"), 400, "invalid_image", "--allow-urls"),
        (chat("/etc/hostname", "hi"), 403, "file_not_allowed", "outside the folder"),
        (chat(good, "hi", n=2), 400, None, "n must be 1"),
        (chat(good, "hi", temperature=-1), 400, None, "temperature must be >= 0.0"),
        (chat(good, "hi", stop=["a", "b", "c", "d", "e"]), 400, None, "up to 4"),
        (chat(good, "\ud800"), 400, None, "not valid Unicode"),
    ]
    for body, status, code, words in cases:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        got_status, _, got = request(url, "POST", "/v1/chat/completions", raw)
        assert got_status == status, (words, got)
        message = _error(got_status, got, code)
        assert words in message, (words, message)
    # the prompt-length refusal names both numbers
    _, _, got = request(url, "POST", "/v1/chat/completions", chat(good, "word " * 800))
    assert re.search(r"the prompt is \d+ tokens \(64 image \+ \d+ text\), longer than the engine's --max-input-len 700",
                     got["error"]["message"])
    # a body larger than any allowed image is refused before it is read whole
    status, _, got = request(url, "POST", "/v1/chat/completions", b"x" * (MAX_IMAGE_BYTES * 2 + (1 << 20)))
    assert status == 413 and _error(status, got, "request_too_large")
    status, _, got = request(url, "GET", "/v1/nothing")
    assert status == 404 and _error(status, got, "not_found")
    status, _, got = request(url, "GET", "/v1/chat/completions")
    assert status == 405 and _error(status, got)
    # local files inside --allow-files are read
    status, _, got = request(url, "POST", "/v1/chat/completions", chat(str(allowed / "ok.png"), "hi", max_tokens=2))
    assert status == 200 and got["usage"]["completion_tokens"] >= 1
    status, _, got = request(url, "POST", "/v1/chat/completions",
                             chat("file://" + str(allowed / "ok.png"), "hi", max_tokens=2))
    assert status == 200
    assert request(url, "GET", "/health")[0] == 200


def _noise_png(path: Path, at_least: int) -> None:
    import numpy as np
    from PIL import Image

    side = int((at_least / 3) ** 0.5) + 64
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
    assert path.stat().st_size > at_least


def _long_answer(pipe, images) -> tuple[Path, str]:
    """An image and prompt whose greedy answer runs to MAX_OUTPUT tokens (no end of sequence)."""
    for image in images:
        for prompt in PROMPTS:
            if pipe.generate(image, prompt, max_new_tokens=MAX_OUTPUT).finish_reason == "length":
                return image, prompt
    pytest.skip("every answer of the tiny model ends early")


def _settled(url, before: dict, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = request(url, "GET", "/health")[2]
        if health["cancelled"] > before["cancelled"] and health["running"] == 0 and health["waiting"] == 0:
            return health
        time.sleep(0.05)
    raise AssertionError(f"the request was not cancelled: {health}")


def test_disconnected_clients_stop_costing_decode_steps(server, pipe, images):
    image, prompt = _long_answer(pipe, images)
    body = json.dumps(chat(data_url(image), prompt, max_tokens=MAX_OUTPUT, temperature=0, stream=True)).encode()
    before = request(server.url, "GET", "/health")[2]
    conn = connection(server.url)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    seen = b""
    while seen.count(b"data: ") < 3:  # the role chunk and two chunks of text
        seen += response.read1(4096)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    after = _settled(server.url, before)
    assert after["generated_tokens"] - before["generated_tokens"] < MAX_OUTPUT

    body = json.dumps(chat(data_url(image), prompt, max_tokens=MAX_OUTPUT, temperature=0)).encode()
    before = after
    conn = connection(server.url)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + 30
    while request(server.url, "GET", "/health")[2]["running"] == 0:  # gives up once its answer is being generated
        assert time.monotonic() < deadline
        time.sleep(0.01)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    after = _settled(server.url, before)
    assert after["generated_tokens"] - before["generated_tokens"] < MAX_OUTPUT
    assert " 499 " in server.log()
    assert request(server.url, "GET", "/health")[0] == 200


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_does_not_grow_over_500_requests(server, images):
    """500 requests, a fifth of them real (2 tokens, four at a time), the rest refused in every
    way: resident memory after them is within 16 MiB of what it was after the first 100."""
    url, good = server.url, data_url(images[0])
    bad = [b"{oops", json.dumps(chat("data:image/png;base64,@@", "hi")).encode(),
           json.dumps(chat(good, "hi", max_tokens=MAX_OUTPUT + 5)).encode(),
           json.dumps(chat(good, "word " * 800)).encode(),
           json.dumps(chat("data:image/png;base64," + base64.b64encode(b"\x89PNG broken").decode(), "hi")).encode()]
    real = [json.dumps(chat(data_url(images[i % 3]), PROMPTS[i % len(PROMPTS)], max_tokens=2, temperature=0)).encode()
            for i in range(3)]

    def send(i: int) -> int:
        body = real[i % 3] if i % 5 == 0 else bad[i % len(bad)]
        return request(url, "POST", "/v1/chat/completions", body)[0]

    with ThreadPoolExecutor(4) as pool:
        first = list(pool.map(send, range(100)))
        rss_100 = _rss(server.pid)
        rest = list(pool.map(send, range(100, 500)))
    rss_500 = _rss(server.pid)
    statuses = first + rest
    assert statuses.count(200) == 100 and set(statuses) == {200, 400}
    assert rss_500 - rss_100 < 16 << 20, (rss_100, rss_500)
    assert request(url, "GET", "/health")[0] == 200


def test_flood_fills_the_queue_and_deadlines_cancel(serve_engine, pipe, images, tmp_path):
    """One request per engine call, two may wait: a burst of 12 gets 503 + Retry-After for the
    rest; a request that outlives --request-timeout gets 504 and is cancelled. The deadline,
    0.02 s, is shorter than the tiny engine's vision graph alone (~0.1 s on a quiet CPU), so the
    long answer can never finish first."""
    body = json.dumps(chat(data_url(images[0]), PROMPTS[0], max_tokens=20, temperature=0)).encode()
    with ServerProcess(serve_engine, "--max-batch", "1", "--max-queue", "2", "--request-timeout", "0.02",
                       log_path=tmp_path / "flood.log", cwd=ROOT) as srv:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: request(srv.url, "POST", "/v1/chat/completions", body), range(12)))
        statuses = [a[0] for a in answers]
        assert statuses.count(503) >= 6 and set(statuses) <= {200, 503, 504}
        for status, headers, got in answers:
            if status == 503:
                assert headers["retry-after"] == "1" and _error(status, got, "queue_full")
        assert request(srv.url, "GET", "/health")[2]["status"] == "ok"
        image, prompt = _long_answer(pipe, images)
        slow = chat(data_url(image), prompt, max_tokens=MAX_OUTPUT, temperature=0)
        before = request(srv.url, "GET", "/health")[2]
        status, _, got = request(srv.url, "POST", "/v1/chat/completions", slow)
        assert status == 504 and "--request-timeout 0.02 s" in _error(status, got, "deadline_exceeded")
        after = _settled(srv.url, before)
        assert after["generated_tokens"] - before["generated_tokens"] < MAX_OUTPUT
        # a deadline in a stream: the error arrives as an event, then [DONE]
        status, _, text = request(srv.url, "POST", "/v1/chat/completions", {**slow, "stream": True})
        assert status == 200 and '"code": "deadline_exceeded"' in text and text.rstrip().endswith("data: [DONE]")


_PROBE = """
import json, sys, threading, time, urllib.request
from runtime.cli import main
port, argv = sys.argv[1], sys.argv[2:]
threading.Thread(target=main, args=(argv + ["--port", port],), daemon=True).start()
base = f"http://127.0.0.1:{port}"
for _ in range(600):
    try:
        urllib.request.urlopen(base + "/health", timeout=1); break
    except OSError:
        time.sleep(0.1)
body = open(%r, "rb").read()
req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
answer = json.loads(urllib.request.urlopen(req, timeout=120).read())
print(json.dumps({"usage": answer["usage"], "modules": sorted({m.split('.')[0] for m in sys.modules})}))
sys.stdout.flush()
"""


def test_server_process_imports_no_torch(serve_engine, images, tmp_path):
    from test_lean_runtime import FORBIDDEN

    body = tmp_path / "body.json"
    body.write_text(json.dumps(chat(data_url(images[0]), PROMPTS[0], max_tokens=3, temperature=0)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["serve", "--engine-dir", serve_engine, "--backend", "onnxruntime"]
    res = subprocess.run([sys.executable, "-c", _PROBE % str(body), str(port), *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    probe = json.loads(res.stdout.strip().splitlines()[-1])
    assert probe["usage"]["completion_tokens"] >= 1
    assert sorted(set(FORBIDDEN) & set(probe["modules"])) == []
    assert {"onnxruntime", "fastapi", "uvicorn"} <= set(probe["modules"])
