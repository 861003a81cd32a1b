"""The server's wire format without a server: request parsing (what is accepted, defaults,
every refusal with its status and field), responses and stream events, and image URLs (data:
URLs, http(s) only with --allow-urls, local files only under --allow-files)."""
from __future__ import annotations

import base64
import http.server
import threading

import pytest

from runtime.serve.image_source import ImagePolicy, image_bytes
from runtime.serve.protocol import ApiError, chunk, completion, parse_chat_request, parse_json, sse, usage

PNG = base64.b64encode(b"\x89PNG fake").decode()


def _body(**fields):
    content = [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    return {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": content}], **fields}


def test_parse_accepts_openai_requests():
    req = parse_chat_request(_body(max_tokens=5, temperature=0, top_p=0.5, seed=3, stop="x", stream=True,
                                   stream_options={"include_usage": True}, user="ignored", n=1))
    assert req.messages == [{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                            {"role": "user", "content": [{"type": "text", "text": "what?"}, {"type": "image"}]}]
    assert req.image_url.startswith("data:image/png;base64,")
    assert (req.max_tokens, req.temperature, req.top_p, req.seed, req.stop, req.stream, req.include_usage) == \
        (5, 0.0, 0.5, 3, ("x",), True, True)
    defaults = parse_chat_request({"messages": [{"role": "developer", "content": "x"}, _body()["messages"][1]]})
    assert defaults.model is None and defaults.max_tokens is None and defaults.temperature == 1.0
    assert defaults.messages[0]["role"] == "system" and 0 <= defaults.seed < 2**63 and not defaults.stream
    assert parse_chat_request(_body(max_completion_tokens=7)).max_tokens == 7
    assert parse_chat_request(_body(seed=None)).seed != parse_chat_request(_body(seed=None)).seed  # fresh, as OpenAI


@pytest.mark.parametrize("fields,param,words", [
    ({"messages": "hi"}, "messages", "non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages", "role must be one of"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages", "unsupported content part type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages", "needs"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages", "string or a list of parts"),
    ({"max_tokens": 0}, "max_tokens", ">= 1"), ({"max_tokens": 2.5}, "max_tokens", "an integer"),
    ({"temperature": "hot"}, "temperature", "a number"), ({"temperature": 3}, "temperature", "<= 2.0"),
    ({"top_p": 0}, "top_p", "> 0.0"), ({"seed": -1}, "seed", ">= 0"), ({"stop": [""]}, "stop", "non-empty"),
    ({"n": 3}, "n", "n must be 1"), ({"logprobs": True}, "logprobs", "not supported"),
    ({"tools": [{}]}, "tools", "not supported"), ({"stream": "yes"}, "stream", "true or false"),
    ({"model": 5}, "model", "must be a string"),
])
def test_parse_refusals(fields, param, words):
    with pytest.raises(ApiError) as err:
        parse_chat_request({**_body(), **fields})
    assert err.value.status == 400 and err.value.param == param and words in err.value.message
    body = err.value.body()
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param


def test_parse_json_and_image_count():
    with pytest.raises(ApiError, match="not valid JSON"):
        parse_json(b"\xff")
    with pytest.raises(ApiError, match="must be a JSON object, not list"):
        parse_json(b"[]")
    two = _body()
    two["messages"][1]["content"].append(two["messages"][1]["content"][1])
    with pytest.raises(ApiError, match="the messages hold 2") as err:
        parse_chat_request(two)
    assert err.value.code == "image_count"


def test_responses_and_events():
    req = parse_chat_request(_body())
    use = usage(70, 5)
    body = completion(req, "m", "hi", "length", use, {"keep": 64})
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 70, "completion_tokens": 5, "total_tokens": 75}
    assert body["edgeprune"] == {"keep": 64} and body["id"].startswith("chatcmpl-")
    assert completion(req, "m", "", "cancelled", use, {})["choices"][0]["finish_reason"] == "stop"
    event = chunk(req, "m", {"content": "é"})
    assert event["object"] == "chat.completion.chunk" and event["choices"][0]["finish_reason"] is None
    assert sse(event).startswith(b"data: {") and sse(event).endswith(b"\n\n") and "é".encode() in sse(event)
    assert sse("[DONE]") == b"data: [DONE]\n\n"


def test_data_urls():
    policy = ImagePolicy(max_bytes=100)
    assert image_bytes("data:image/png;base64," + base64.b64encode(b"abc").decode(), policy) == b"abc"
    for url, status, words in [
        ("data:text/plain;base64,YWJj", 400, "not an image"), ("data:image/png,abc", 400, "base64-encoded"),
        ("data:image/png;base64,a$c", 400, "not valid base64"), ("data:image/png;base64,", 400, "empty"),
        ("data:image/png;base64" + "x" * 10, 400, "comma"),
        ("data:image/png;base64," + base64.b64encode(b"x" * 101).decode(), 413, "101 bytes"),
        ("data:image/png;base64," + "A" * 1000, 413, "--max-image-bytes 100"),
        ("ftp://x/y.png", 400, "unsupported image URL"), ("cat.png", 400, "unsupported image URL"),
    ]:
        with pytest.raises(ApiError) as err:
            image_bytes(url, policy)
        assert err.value.status == status and words in err.value.message, url


def test_local_files_only_inside_the_allowed_folder(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir(), outside.mkdir()
    (inside / "a.png").write_bytes(b"abc")
    (outside / "b.png").write_bytes(b"def")
    (inside / "link.png").symlink_to(outside / "b.png")
    (inside / "big.png").write_bytes(b"x" * 200)
    policy = ImagePolicy(100, allow_files=inside)
    assert image_bytes(str(inside / "a.png"), policy) == b"abc"
    assert image_bytes(f"file://{inside / 'a.png'}", policy) == b"abc"
    for path, status, words in [(outside / "b.png", 403, "outside the folder"), (inside / "link.png", 403, "outside"),
                                (inside / ".." / "out" / "b.png", 403, "outside"), (inside / "no.png", 400, "does not exist"),
                                (inside / "big.png", 413, "200 bytes")]:
        with pytest.raises(ApiError) as err:
            image_bytes(str(path), policy)
        assert err.value.status == status and words in err.value.message, path
    with pytest.raises(ApiError, match="--allow-files DIR") as err:
        image_bytes(str(inside / "a.png"), ImagePolicy(100))
    assert err.value.status == 403


def test_http_urls_only_when_allowed(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png bytes")
    (tmp_path / "big.png").write_bytes(b"x" * 500)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ApiError, match="--allow-urls"):
            image_bytes(f"{base}/a.png", ImagePolicy(100))
        allowed = ImagePolicy(100, allow_urls=True)
        assert image_bytes(f"{base}/a.png", allowed) == b"png bytes"
        with pytest.raises(ApiError) as err:
            image_bytes(f"{base}/big.png", allowed)
        assert err.value.status == 413
        with pytest.raises(ApiError, match="cannot fetch the image URL"):
            image_bytes(f"{base}/missing.png", allowed)
    finally:
        server.shutdown()
