"""What a generation returns: typed values for whole and streamed generations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class Timings:
    """Seconds spent: the vision engine for the whole batch, the prefill step, and each decode
    step after it. Time to first token = vision + prefill."""

    vision_s: float
    prefill_s: float
    decode_s: tuple[float, ...] = ()

    @property
    def ttft_s(self) -> float:
        return self.vision_s + self.prefill_s

    @property
    def decode_tokens_per_s(self) -> float | None:
        return len(self.decode_s) / sum(self.decode_s) if self.decode_s and sum(self.decode_s) > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {"vision_s": self.vision_s, "prefill_s": self.prefill_s, "ttft_s": self.ttft_s,
                "decode_s": list(self.decode_s)}


@dataclass(frozen=True)
class Backends:
    """Which backend ran each part, and why (e.g. why `auto` fell back to ONNX Runtime)."""

    vision: str
    decoder: str
    reason: str

    def describe(self) -> str:
        return f"vision {self.vision}, decoder {self.decoder} ({self.reason})"


@dataclass(frozen=True)
class Generation:
    """One request's answer. kept_indices: the kept patch indices (LLaVA-1.5), or one list per
    view, base view first (LLaVA-NeXT). visual_tokens: the image's tokens in the prompt."""

    text: str
    token_ids: list[int]
    kept_indices: list[int] | list[list[int]]
    timings: Timings
    visual_tokens: int
    prompt_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length" (max_new_tokens) | "cancelled"

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": self.token_ids, "kept_indices": self.kept_indices,
                "visual_tokens": self.visual_tokens, "prompt_tokens": self.prompt_tokens,
                "finish_reason": self.finish_reason, "timings": self.timings.as_dict()}


@dataclass(frozen=True)
class StreamChunk:
    """New text of one request (`request` = its index in the batch); `token_ids` the tokens that
    produced it (several when a multi-byte character needed more than one). A request's last
    chunk carries its whole `generation` (its text may be empty); earlier chunks carry None."""

    request: int
    text: str
    token_ids: tuple[int, ...] = ()
    generation: Generation | None = None


@dataclass
class GenerationStream:
    """Iterating yields StreamChunks as tokens arrive; once it is exhausted, `results` holds each
    request's Generation (the same values `Pipeline.generate` returns). `cancel(i)` ends request
    i early, from any thread."""

    _chunks: Iterator[StreamChunk]
    _finish: Callable[[], list[Generation]]
    _cancel: Callable[[int], None] | None = None
    results: list[Generation] = field(default_factory=list)
    single: bool = False  # made from one image (Pipeline.generate then returns one Generation)

    def __iter__(self) -> Iterator[StreamChunk]:
        yield from self._chunks
        self.results = self._finish()

    def cancel(self, request: int) -> None:
        """End request `request` (its index in the batch) at the next step; its Generation has
        finish_reason "cancelled". The others go on."""
        if self._cancel is not None:
            self._cancel(request)

    def text(self) -> str:
        """Consume the stream of a single request and return its whole text."""
        return "".join(chunk.text for chunk in self)
