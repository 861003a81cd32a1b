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
    """temperature 0 = greedy; otherwise nucleus sampling over the smallest set of tokens whose
    probability reaches top_p, seeded per request."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False

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


def sample(logits: np.ndarray, sampling: Sampling, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """(B, vocab) logits -> (B,) token ids."""
    if sampling.temperature <= 0:
        return logits.argmax(axis=-1)
    out = np.empty(logits.shape[0], np.int64)
    for b, row in enumerate(logits.astype(np.float64) / sampling.temperature):
        p = np.exp(row - row.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        cut = order[: int(np.searchsorted(cum, sampling.top_p) + 1)]
        out[b] = rngs[b].choice(cut, p=p[cut] / p[cut].sum())
    return out


@dataclass
class StepTimes:
    prefill_s: float = 0.0
    decode_s: list[float] = field(default_factory=list)


def generate_steps(decoder: StepDecoder | SequenceDecoder, ids: Sequence[Sequence[int]], table: np.ndarray,
                   visual_tokens: int, sampling: Sampling, *, eos: int, pad: int,
                   times: StepTimes) -> Iterator[np.ndarray]:
    """Yields the (B,) token ids of every step until all requests ended or max_new_tokens."""
    bsz, k = len(ids), visual_tokens
    if isinstance(decoder, SequenceDecoder):
        t1 = time.perf_counter()
        tokens = decoder.generate_ids(ids, table, k, sampling.max_new_tokens, sampling.temperature, sampling.top_p,
                                      eos, pad)
        times.prefill_s = time.perf_counter() - t1
        yield from tokens.T
        return
    width = max(len(p) for p in ids)
    input_ids = np.full((bsz, width), pad, np.int64)
    mask = np.zeros((bsz, width), np.int64)
    for b, p in enumerate(ids):
        input_ids[b, width - len(p):] = p
        mask[b, width - len(p):] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    prompt_table = {Tensors.PROMPT_TABLE: np.ascontiguousarray(table), Tensors.TASKS: np.zeros(bsz, np.int64),
                    Tensors.PROMPT_VOCAB_SIZE: np.array([k], np.int64)}
    rngs = [np.random.default_rng(sampling.seed) for _ in range(bsz)]
    stop = -1 if sampling.ignore_eos else eos
    done = np.zeros(bsz, bool)
    decoder.start(bsz)
    t1 = time.perf_counter()
    logits = decoder.step({Tensors.INPUT_IDS: input_ids, Tensors.POSITION_IDS: positions,
                           Tensors.ATTENTION_MASK: mask, **prompt_table})
    for n in range(sampling.max_new_tokens):
        token = np.where(done, pad, sample(logits, sampling, rngs))
        now = time.perf_counter()
        if n == 0:
            times.prefill_s = now - t1
        else:
            times.decode_s.append(now - t1)
        yield token
        done |= token == stop
        if done.all() or n + 1 == sampling.max_new_tokens:
            return
        t1 = time.perf_counter()
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((bsz, 1), np.int64)], axis=1)
        logits = decoder.step({Tensors.INPUT_IDS: token[:, None].astype(np.int64), Tensors.POSITION_IDS: positions,
                               Tensors.ATTENTION_MASK: mask, **prompt_table})
