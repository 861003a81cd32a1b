"""The OpenAI chat-completions wire format: request bodies in, responses and stream chunks out,
and every refusal as an `ApiError` carrying the HTTP status and OpenAI's error object.

What is accepted: `messages` (roles system / user / assistant, content a string or a list of
`text` and `image_url` parts, exactly one image, in a user message), `model`, `max_tokens` (or
`max_completion_tokens`), `temperature` (default 1, as OpenAI), `top_p`, `seed` (default: a fresh
one per request, as OpenAI), `stop` (a string or up to 4), `stream`, `stream_options.include_usage`,
and `n` = 1. Unknown fields are ignored; `logprobs`, `tools` and `n` > 1 are refused (these models
have no use for them, and ignoring them would answer something else than was asked)."""
from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

MAX_STOP = 4  # OpenAI's limit
ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    """A refused request: HTTP `status` and OpenAI's {"error": {...}} body."""

    TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
             413: "invalid_request_error", 500: "server_error", 503: "server_overloaded", 504: "timeout"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """One parsed request. `messages` are in the pipeline's form: the image part became
    `{"type": "image"}` and `image_url` holds its URL."""

    model: str | None
    messages: list[dict[str, Any]]
    image_url: str
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _number(body: dict, name: str, default: float, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
        raise _bad(f"{name} must be a number, got {value!r}", name)
    if low is not None and (value <= low if low_open else value < low):
        raise _bad(f"{name} must be {'>' if low_open else '>='} {low}, got {value}", name)
    if high is not None and value > high:
        raise _bad(f"{name} must be <= {high}, got {value}", name)
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer, got {value!r}", name)
    return value


def _image_url(part: dict, where: str) -> str:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise _bad(f"{where}: an image_url part needs {{\"image_url\": {{\"url\": ...}}}}", "messages")
    return url


def _messages(raw: Any) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(raw, list) or not raw:
        raise _bad("messages must be a non-empty list", "messages")
    out, urls = [], []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}] must be an object", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", "messages")
        role = "system" if role == "developer" else role
        content = message.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise _bad(f"{where}: a text part needs a string \"text\"", "messages")
                    parts.append({"type": "text", "text": part["text"]})
                elif kind in ("image_url", "input_image"):
                    if role != "user":
                        raise _bad(f"{where}: images are accepted in user messages only", "messages")
                    urls.append(_image_url(part, where))
                    parts.append({"type": "image"})
                else:
                    raise _bad(f"{where}: unsupported content part type {kind!r} (text and image_url are)",
                               "messages")
        elif content is None and role == "assistant":
            parts = []
        else:
            raise _bad(f"messages[{i}].content must be a string or a list of parts", "messages")
        out.append({"role": role, "content": parts})
    if len(urls) != 1:
        raise _bad(f"this model takes exactly one image per request (an image_url part in a user message); "
                   f"the messages hold {len(urls)}", "messages", "image_count")
    return out, urls[0]


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    """A request body -> ChatRequest, or ApiError(400) naming the field at fault. Engine limits
    (max_tokens, prompt length) and the model name are checked by the service, which knows them."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad(f"model must be a string, got {model!r}", "model")
    messages, url = _messages(body.get("messages"))
    max_tokens = _integer(body, "max_completion_tokens")
    max_tokens = _integer(body, "max_tokens") if max_tokens is None else max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise _bad(f"max_tokens must be >= 1, got {max_tokens}", "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    seed = _integer(body, "seed")
    if seed is not None and seed < 0:
        raise _bad(f"seed must be >= 0, got {seed}", "seed")
    stop = body.get("stop")
    stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise _bad(f"stop must be a non-empty string or a list of up to {MAX_STOP} of them", "stop")
    n = body.get("n", 1)
    if n not in (None, 1) or isinstance(n, bool):
        raise _bad(f"n must be 1 (one completion per request), got {n!r}", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _bad("logprobs are not supported", "logprobs")
    if body.get("tools") or body.get("functions"):
        raise _bad("tools and function calling are not supported", "tools")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    return ChatRequest(model, messages, url, max_tokens, temperature, top_p,
                       seed if seed is not None else secrets.randbelow(2**63), tuple(stop), bool(stream),
                       bool(options.get("include_usage")))


# ---- responses ----------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason(reason: str) -> str:
    """OpenAI's reasons are stop and length; a request that ended early for another reason
    (cancelled: the client left or the deadline passed) never gets a response body anyway."""
    return reason if reason in ("stop", "length") else "stop"


def completion(req: ChatRequest, model: str, text: str, reason: str, use: dict[str, int],
               extra: dict[str, Any]) -> dict[str, Any]:
    return {"id": req.id, "object": "chat.completion", "created": req.created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason(reason)}],
            "usage": use, "edgeprune": extra}


def chunk(req: ChatRequest, model: str, delta: dict[str, Any], reason: str | None = None,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                        "finish_reason": finish_reason(reason) if reason else None}]}
    if extra is not None:
        out["edgeprune"] = extra
    return out


def usage_chunk(req: ChatRequest, model: str, use: dict[str, int]) -> dict[str, Any]:
    return {"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": model,
            "choices": [], "usage": use}


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` (or `data: [DONE]`) and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
