"""The generation loop shared by every step-level decoder, and sampling.

Requests in a batch are left-padded and masked, which makes each request's result that of a
batch of one; sampling uses one generator per request, so a request samples the same tokens
alone or in a batch. Only the decoder's arithmetic differs between backends, so parity tests
compare token ids exactly."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .backends.base import SequenceDecoder, StepDecoder
from .contract import Tensors
from .errors import UserError


@dataclass(frozen=True)
class Sampling:
    """One request's decoding settings. temperature 0 = greedy; otherwise nucleus sampling over the
    smallest set of tokens whose probability reaches top_p, seeded per request. `stop`: strings
    that end the request when its text reaches one (the text is cut before it)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        for name, value in (("temperature", self.temperature), ("top_p", self.top_p)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value!r}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be an integer >= 0, got {self.seed!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) and s for s in stop):
            raise UserError(f"stop must be a string or a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def same_draw(self, other: "Sampling") -> bool:
        """Whether a decoder that samples a whole batch one way (TensorRT-LLM) can run both."""
        return (self.greedy and other.greedy) or (self.temperature, self.top_p, self.seed) == \
            (other.temperature, other.top_p, other.seed)


def per_request(sampling: Sampling | Sequence[Sampling], batch: int) -> list[Sampling]:
    """One Sampling per request: a single one is shared by the whole batch."""
    if isinstance(sampling, Sampling):
        return [sampling] * batch
    samplings = list(sampling)
    if len(samplings) != batch:
        raise UserError(f"{batch} requests but {len(samplings)} sampling settings")
    return samplings


def sample_rows(logits: np.ndarray, samplings: Sequence[Sampling], rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """(B, vocab) logits -> (B,) token ids, row b drawn with samplings[b] and its own generator."""
    out = np.empty(logits.shape[0], np.int64)
    for b, (row, sampling) in enumerate(zip(logits, samplings)):
        if sampling.greedy:
            out[b] = int(row.argmax())
            continue
        z = row.astype(np.float64) / sampling.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        cut = order[: int(np.searchsorted(cum, sampling.top_p) + 1)]
        out[b] = rngs[b].choice(cut, p=p[cut] / p[cut].sum())
    return out


def sample(logits: np.ndarray, sampling: Sampling, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """(B, vocab) logits -> (B,) token ids, every row with the same settings."""
    return sample_rows(logits, [sampling] * logits.shape[0], rngs)


@dataclass
class StepTimes:
    prefill_s: float = 0.0
    decode_s: list[float] = field(default_factory=list)


def generate_steps(decoder: StepDecoder | SequenceDecoder, ids: Sequence[Sequence[int]], table: np.ndarray,
                   visual_tokens: int, sampling: Sampling | Sequence[Sampling], *, eos: int, pad: int,
                   times: StepTimes, done: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Yields the (B,) token ids of every step (`pad` for requests that have ended) until every
    request has ended: by end of sequence, by reaching its own max_new_tokens, or because the caller
    set its entry of `done` (a (B,) bool array it owns: a stop sequence, a cancelled request)
    between two steps. Requests that have ended leave the decoder's batch when the decoder can drop
    cache rows (`StepDecoder.keep_rows`), so they stop costing compute; the others go on exactly as
    before (left padding and masks make each row independent of the rest)."""
    bsz, k = len(ids), visual_tokens
    samplings = per_request(sampling, bsz)
    done = np.zeros(bsz, bool) if done is None else done
    limits = np.array([s.max_new_tokens for s in samplings])
    stops = np.array([-1 if s.ignore_eos else eos for s in samplings])
    if isinstance(decoder, SequenceDecoder):
        yield from _sequence_steps(decoder, ids, table, k, samplings, eos, pad, times, done, limits, stops)
        return
    width = max(len(p) for p in ids)
    input_ids = np.full((bsz, width), pad, np.int64)
    mask = np.zeros((bsz, width), np.int64)
    for b, p in enumerate(ids):
        input_ids[b, width - len(p):] = p
        mask[b, width - len(p):] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    table = np.ascontiguousarray(table)
    rngs = [np.random.default_rng(s.seed) for s in samplings]
    rows = np.arange(bsz)  # the request each of the decoder's batch rows belongs to

    def feeds(step_ids, step_positions, step_mask):
        return {Tensors.INPUT_IDS: step_ids, Tensors.POSITION_IDS: step_positions, Tensors.ATTENTION_MASK: step_mask,
                Tensors.PROMPT_TABLE: table, Tensors.TASKS: np.zeros(len(rows), np.int64),
                Tensors.PROMPT_VOCAB_SIZE: np.array([k], np.int64)}

    t1 = time.perf_counter()  # the cache set-up counts: a user waits for it as for the prefill
    decoder.start(bsz)
    logits = decoder.step(feeds(input_ids, positions, mask))
    for n in range(int(limits.max())):
        token = np.full(bsz, pad, np.int64)
        live = ~done[rows]
        token[rows[live]] = sample_rows(logits[live], [samplings[r] for r in rows[live]], [rngs[r] for r in rows[live]])
        now = time.perf_counter()
        if n == 0:
            times.prefill_s = now - t1
        else:
            times.decode_s.append(now - t1)
        yield token
        done |= (token == stops) | (n + 1 >= limits)
        if done.all():  # read after the caller had its say
            return
        t1 = time.perf_counter()
        keep = ~done[rows]
        if not keep.all() and decoder.keep_rows(np.flatnonzero(keep)):
            rows, positions, mask = rows[keep], positions[keep], mask[keep]
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], axis=1)
        logits = decoder.step(feeds(token[rows][:, None], positions, mask))


def _sequence_steps(decoder: SequenceDecoder, ids, table, k, samplings, eos, pad, times, done, limits, stops):
    """A decoder that runs the whole loop itself: one sampling rule for the batch, the longest
    max_new_tokens; each request's tokens are then cut at its own limit and end of sequence."""
    first = samplings[0]
    if not all(first.same_draw(s) for s in samplings):
        raise UserError(f"the {decoder.name} decoder samples a whole batch one way: give its requests the same "
                        "temperature, top_p and seed")
    t1 = time.perf_counter()
    tokens = decoder.generate_ids(ids, table, k, int(limits.max()), first.temperature, first.top_p, eos, pad)
    times.prefill_s = time.perf_counter() - t1
    for n, step in enumerate(tokens.T):
        step = np.where(done, pad, step).astype(np.int64)
        yield step
        done |= (step == stops) | (n + 1 >= limits)
        if done.all():
            return
