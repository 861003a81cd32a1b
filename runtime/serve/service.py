"""The request path shared by the HTTP server and `python -m runtime eval`: a parsed OpenAI
request -> checked sampling -> a place in the queue -> the image (off the event loop) ->
`Pipeline.prepare` -> the batcher -> events until the request ends or its deadline passes."""
from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from ..errors import EdgePruneError, UserError, one_line
from ..generation import Sampling
from ..results import Generation
from .batcher import Batcher, QueueFull, Ticket
from .image_source import ImagePolicy, image_bytes
from .protocol import ApiError, ChatRequest, parse_chat_request, usage

MIB = 1 << 20


@dataclass(frozen=True)
class ServeConfig:
    """The knobs of `python -m runtime serve` (see main.py for their meaning)."""

    model_name: str
    max_batch: int | None = None
    batch_window_s: float = 0.005
    max_queue: int = 64
    request_timeout_s: float = 300.0
    max_image_bytes: int = 20 * MIB
    allow_urls: bool = False
    allow_files: Path | None = None
    retry_after_s: int = 1
    prepare_threads: int = 0  # 0: min(4, cores)


@dataclass
class Admitted:
    """A request that is queued or running."""

    request: ChatRequest
    ticket: Ticket
    arrived: float
    first_token: float | None = None
    generation: Generation | None = None
    text: list[str] = field(default_factory=list)


class Service:
    def __init__(self, pipe, config: ServeConfig):
        self.pipe, self.config = pipe, config
        self.batcher = Batcher(pipe, max_batch=config.max_batch, window_s=config.batch_window_s,
                               max_queue=config.max_queue)
        self.policy = ImagePolicy(config.max_image_bytes, config.allow_urls, config.allow_files)
        threads = config.prepare_threads or min(4, os.cpu_count() or 1)
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgeprune-prepare")
        pruning = pipe.engine.vision.pruning
        self.pruning = {"method": pruning.method, "keep": pruning.keep}
        self.started = time.time()

    @property
    def model(self) -> str:
        return self.config.model_name

    def close(self) -> None:
        self.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ---- checks -------------------------------------------------------------------------------
    def check_model(self, req: ChatRequest) -> None:
        if req.model is not None and req.model != self.model:
            raise ApiError(404, f"the model {req.model!r} does not exist: this server serves {self.model!r}",
                           param="model", code="model_not_found")

    def sampling(self, req: ChatRequest) -> Sampling:
        limit = self.pipe.engine.decoder.max_output_len
        if req.max_tokens is not None and req.max_tokens > limit:
            raise ApiError(400, f"max_tokens {req.max_tokens} exceeds the engine's --max-output-len {limit}",
                           param="max_tokens", code="max_tokens_too_large")
        try:
            return Sampling(req.max_tokens or limit, req.temperature, req.top_p, req.seed, False, req.stop)
        except UserError as exc:
            raise ApiError(400, one_line(exc)) from None

    # ---- the request path ---------------------------------------------------------------------
    async def admit(self, body: dict[str, Any]) -> Admitted:
        """Parse, check, prepare and queue one request; ApiError for anything refused."""
        arrived = time.perf_counter()
        req = parse_chat_request(body)
        self.check_model(req)
        sampling = self.sampling(req)
        try:
            self.batcher.reserve()
        except QueueFull:
            raise ApiError(503, f"the server is busy: {self.config.max_queue} requests are waiting; retry later",
                           code="queue_full", headers={"Retry-After": str(self.config.retry_after_s)}) from None
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(self.executor, self._prepare, req, sampling)
        except BaseException:
            self.batcher.release()
            raise
        return Admitted(req, self.batcher.submit(prepared, loop), arrived)

    def _prepare(self, req: ChatRequest, sampling: Sampling):
        raw = image_bytes(req.image_url, self.policy)
        try:
            return self.pipe.prepare(raw, messages=req.messages, sampling=sampling)
        except EdgePruneError as exc:
            raise ApiError(400, one_line(exc), param="messages") from None

    async def events(self, job: Admitted) -> AsyncIterator[tuple]:
        """("chunk", StreamChunk) events, then ("done", Generation). ApiError(504) once the
        deadline passes (the request is cancelled), ApiError(500) if the engine call failed.
        Leaving early (the client went away) cancels the request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s - (time.perf_counter() - job.arrived)
        finished = False
        try:
            while True:
                try:
                    event = await asyncio.wait_for(job.ticket.events.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    raise ApiError(504, f"the request did not finish within the server's --request-timeout "
                                        f"{self.config.request_timeout_s:g} s", code="deadline_exceeded") from None
                kind = event[0]
                if kind == "error":
                    finished = True
                    exc = event[1]
                    if isinstance(exc, asyncio.CancelledError):
                        raise ApiError(504, "the request was cancelled", code="cancelled")
                    raise ApiError(500, f"the engine call failed: {one_line(exc)}", code="engine_error")
                if job.first_token is None:
                    job.first_token = time.perf_counter()
                if kind == "done":
                    finished = True
                    job.generation = event[1]
                yield event
                if finished:
                    return
        finally:
            if not finished:
                job.ticket.cancel()

    async def complete(self, body: dict[str, Any]) -> tuple[Admitted, dict[str, Any]]:
        """A whole (non-streamed) completion: the request and the response body."""
        from .protocol import completion

        job = await self.admit(body)
        async for _ in self.events(job):
            pass
        gen = job.generation
        return job, completion(job.request, self.model, gen.text, gen.finish_reason, self.usage(gen), self.facts(job))

    # ---- what a response says -----------------------------------------------------------------
    @staticmethod
    def usage(gen: Generation) -> dict[str, int]:
        return usage(gen.prompt_tokens, len(gen.token_ids))

    def facts(self, job: Admitted) -> dict[str, Any]:
        """The pruning facts of one answer (the `edgeprune` field of a response)."""
        gen, ticket = job.generation, job.ticket
        kept = gen.kept_indices
        kept_count = sum(len(v) for v in kept) if kept and isinstance(kept[0], list) else len(kept)
        t = gen.timings
        return {**self.pruning, "visual_tokens": gen.visual_tokens, "kept_tokens": kept_count,
                "ttft_s": (job.first_token or time.perf_counter()) - job.arrived, "engine_ttft_s": t.ttft_s,
                "vision_s": t.vision_s, "prefill_s": t.prefill_s,
                "prepare_s": ticket.arrived - job.arrived, "queue_s": (ticket.started or ticket.arrived) - ticket.arrived,
                "batch_size": ticket.batch_size, "finish_reason": gen.finish_reason, "token_ids": gen.token_ids}

    def health(self) -> dict[str, Any]:
        s = self.batcher.stats
        return {"status": "ok", "model": self.model, "backend": self.pipe.backends.describe(),
                **self.batcher.load(), "batches": s.batches, "requests": s.requests, "cancelled": s.cancelled,
                "largest_batch": s.largest_batch, "generated_tokens": s.generated_tokens, "uptime_s": round(time.time() - self.started, 3)}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": int(self.started),
                                            "owned_by": "edgeprune", **self.pruning}]}
