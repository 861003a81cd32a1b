"""Requests that arrive together become one engine call.

One worker thread owns the pipeline (the pipeline runs one batch at a time anyway). It waits
for a request, then gathers more for up to `window_s` counted from the first one's arrival,
until the engine's max batch; requests that piled up while a batch ran start together at once.
Each request keeps its own sampling and gets exactly the tokens it gets alone (the pipeline's
guarantee: left padding, one generator per request). A decoder that samples a whole batch one way
(TensorRT-LLM) only batches requests that draw alike.

The queue is bounded: `reserve` refuses a request (QueueFull -> HTTP 503 with Retry-After) when
`max_queue` requests are already admitted and not yet running. `Ticket.cancel` (client gone,
deadline passed) takes a waiting request out of the queue, or ends a running one at the
pipeline's next step, so it stops costing decode steps.

Events go from the worker thread to the request's asyncio queue:
("chunk", StreamChunk), ("done", Generation), ("error", exception)."""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import EdgePruneError
from ..requests import Prepared

log = logging.getLogger("edgeprune.serve")


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Ticket:
    prepared: Prepared
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    arrived: float = field(default_factory=time.perf_counter)
    started: float | None = None
    batch_size: int = 0
    cancelled: bool = False
    _batcher: "Batcher | None" = None
    _stream: Any = None
    _index: int = -1

    def cancel(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel(self)

    def _send(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


@dataclass
class Stats:
    batches: int = 0
    requests: int = 0
    cancelled: int = 0
    largest_batch: int = 0
    generated_tokens: int = 0  # decode work done, cancelled requests included


class Batcher:
    def __init__(self, pipe, *, max_batch: int | None = None, window_s: float = 0.005, max_queue: int = 64):
        self.pipe = pipe
        self.max_batch = min(max_batch or pipe.engine.max_batch, pipe.engine.max_batch)
        self.window_s, self.max_queue = window_s, max_queue
        self._queue: collections.deque[Ticket] = collections.deque()
        self._reserved = 0
        self._running: list[Ticket] = []
        self._cond = threading.Condition()
        self._stopping = False
        self.stats = Stats()
        self._thread = threading.Thread(target=self._work, name="edgeprune-batcher", daemon=True)
        self._thread.start()

    # ---- admission (any thread) ---------------------------------------------------------------
    def reserve(self) -> None:
        """Hold a place in the queue for a request being prepared, or raise QueueFull."""
        with self._cond:
            if self._reserved + len(self._queue) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are waiting already")
            self._reserved += 1

    def release(self) -> None:
        """Give back a place reserved for a request that failed before it was submitted."""
        with self._cond:
            self._reserved -= 1

    def submit(self, prepared: Prepared, loop: asyncio.AbstractEventLoop) -> Ticket:
        """Queue a prepared request in the place `reserve` held for it."""
        ticket = Ticket(prepared, loop, asyncio.Queue(), _batcher=self)
        with self._cond:
            self._reserved -= 1
            self._queue.append(ticket)
            self._cond.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.cancelled:
                return
            ticket.cancelled = True
            self.stats.cancelled += 1
            if ticket in self._queue:
                self._queue.remove(ticket)
                ticket._send(("error", asyncio.CancelledError()))
            elif ticket._stream is not None:
                ticket._stream.cancel(ticket._index)

    def load(self) -> dict[str, int]:
        with self._cond:
            return {"waiting": len(self._queue) + self._reserved, "running": len(self._running),
                    "max_queue": self.max_queue, "max_batch": self.max_batch}

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # ---- the worker thread --------------------------------------------------------------------
    def _next_batch(self) -> list[Ticket]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            until = self._queue[0].arrived + self.window_s
            while len(self._queue) < self.max_batch and not self._stopping:
                left = until - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            if not self._queue:  # all cancelled while gathering
                return []
            first = self._queue[0].prepared.sampling
            mixed = self.pipe.mixed_sampling
            batch = [t for t in self._queue if mixed or first.same_draw(t.prepared.sampling)][: self.max_batch]
            for t in batch:
                self._queue.remove(t)
            self._running = batch
            return batch

    def _work(self) -> None:
        while not self._stopping:
            batch = self._next_batch()
            if batch:
                self._run(batch)

    def _run(self, batch: list[Ticket]) -> None:
        now = time.perf_counter()
        try:
            stream = self.pipe.run([t.prepared for t in batch])
            with self._cond:
                for i, t in enumerate(batch):
                    t._stream, t._index, t.started, t.batch_size = stream, i, now, len(batch)
                    if t.cancelled:  # cancelled between leaving the queue and here
                        stream.cancel(i)
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for chunk in stream:
                ticket = batch[chunk.request]
                if chunk.text:
                    ticket._send(("chunk", chunk))
                if chunk.generation is not None:
                    self.stats.generated_tokens += len(chunk.generation.token_ids)
                    ticket._send(("done", chunk.generation))
        except EdgePruneError as exc:
            for t in batch:
                t._send(("error", exc))
        except Exception as exc:  # a bug or a backend failure: this batch fails, the server goes on
            log.exception("batch of %d failed", len(batch))
            for t in batch:
                t._send(("error", exc))
        finally:
            with self._cond:
                for t in batch:
                    t._stream = None
                self._running = []
