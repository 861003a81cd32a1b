"""The FastAPI application: routes, OpenAI-style errors for everything, one log line per request.

Routes: POST /v1/chat/completions (plain or `stream: true` server-sent events ending with
`data: [DONE]`), GET /v1/models, GET /health. The body is read here with a byte limit (so a
huge upload is refused with 413 before it is held in memory) and parsed by protocol.py, not by
pydantic models: every refusal must be OpenAI's error object with the status the API promises
(FastAPI's validation would answer 422 with its own shape)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..optional import need

need("fastapi", "python -m runtime serve")
from fastapi import FastAPI, Request  # noqa: E402  (after the install hint)
from starlette.requests import ClientDisconnect  # noqa: E402
from starlette.responses import JSONResponse, StreamingResponse  # noqa: E402

from .protocol import ApiError, chunk, parse_json, sse, usage_chunk
from .service import Admitted, Service

log = logging.getLogger("edgeprune.serve")
TEXT_ALLOWANCE = 1 << 20  # body bytes allowed beside the base64 image: the chat's text


def create_app(service: Service):
    app = FastAPI(title="edgeprune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    max_body = service.config.max_image_bytes * 4 // 3 + TEXT_ALLOWANCE

    def error_response(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    def log_line(method: str, path: str, status: int, t0: float, **fields: Any) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        log.info("%s %s %d %.1fms %s", method, path, status, (time.perf_counter() - t0) * 1e3, extra)

    def served(job: Admitted) -> dict[str, Any]:
        gen = job.generation
        if gen is None:
            return {}
        return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": len(gen.token_ids),
                "ttft_ms": f"{((job.first_token or job.arrived) - job.arrived) * 1e3:.1f}",
                "queue_ms": f"{((job.ticket.started or job.ticket.arrived) - job.ticket.arrived) * 1e3:.1f}",
                "batch": job.ticket.batch_size, "finish": gen.finish_reason}

    async def read_body(request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise ApiError(413, f"the request body is {declared} bytes, more than this server accepts ({max_body}: "
                                f"--max-image-bytes {service.config.max_image_bytes} as base64 plus text)",
                           code="request_too_large")
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > max_body:
                raise ApiError(413, f"the request body is more than this server accepts ({max_body} bytes: "
                                    f"--max-image-bytes {service.config.max_image_bytes} as base64 plus text)",
                               code="request_too_large")
            chunks.append(part)
        return b"".join(chunks)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(ApiError(500, f"internal server error: {type(exc).__name__}"))

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return error_response(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def _not_allowed(request, exc):
        return error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                                       code="method_not_allowed"))

    @app.get("/health")
    async def health():
        t0 = time.perf_counter()
        body = service.health()
        log_line("GET", "/health", 200, t0)
        return body

    @app.get("/v1/models")
    async def models():
        t0 = time.perf_counter()
        body = service.models()
        log_line("GET", "/v1/models", 200, t0)
        return body

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        t0 = time.perf_counter()
        path = "/v1/chat/completions"
        job: Admitted | None = None
        try:
            body = parse_json(await read_body(request))
            if body.get("stream") is True:
                job = await service.admit(body)
                return StreamingResponse(_stream(job, t0), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            job, response = await _complete_watching(request, body)
            log_line("POST", path, 200, t0, **served(job))
            return JSONResponse(response)
        except ApiError as exc:
            log_line("POST", path, exc.status, t0, **(served(job) if job else {}), error=repr(exc.message[:120]))
            return error_response(exc)
        except ClientDisconnect:
            log_line("POST", path, 499, t0, error="'client disconnected'")
            raise

    async def _complete_watching(request, body) -> tuple[Admitted, dict]:
        """service.complete, cancelled when the client disconnects while it waits."""
        task = asyncio.ensure_future(service.complete(body))
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            task.cancel()  # the events generator's cleanup cancels the ticket
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
            raise ClientDisconnect()
        finally:
            watch.cancel()

    async def _disconnected(request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    async def _stream(job: Admitted, t0: float):
        req, model = job.request, service.model
        status, error = 200, None
        try:
            yield sse(chunk(req, model, {"role": "assistant", "content": ""}))
            async for event in service.events(job):
                if event[0] == "chunk":
                    yield sse(chunk(req, model, {"content": event[1].text}))
                else:
                    gen = event[1]
                    yield sse(chunk(req, model, {}, gen.finish_reason, service.facts(job)))
                    if req.include_usage:
                        yield sse(usage_chunk(req, model, service.usage(gen)))
            yield sse("[DONE]")
        except ApiError as exc:  # headers are sent: the error goes in the stream, as OpenAI does
            status, error = exc.status, repr(exc.message[:120])
            yield sse(exc.body())
            yield sse("[DONE]")
        except (asyncio.CancelledError, GeneratorExit):
            status, error = 499, "'client disconnected'"
            raise
        finally:
            log_line("POST", "/v1/chat/completions", status, t0, stream="true", **served(job), error=error)

    return app
