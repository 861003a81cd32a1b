"""One request's text as its tokens arrive: what may be shown now, and where it ends.

Two things keep text back. A token may end inside a multi-byte character (the decoded text then
ends in U+FFFD): nothing is shown until the character is complete. A stop sequence may be
starting: the longest end of the text that could still grow into one of the request's `stop`
strings is held until it either completes (the text ends before it) or stops matching. So a
streamed request shows exactly the text its whole generation returns, and never a stop string.
"""
from __future__ import annotations

from typing import Callable, Sequence


def first_stop(text: str, stops: Sequence[str]) -> int:
    """Index where the earliest stop string starts in `text`, or -1."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


def partial_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is a proper beginning of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class RequestText:
    """Tokens in, newly visible text out. `decode(ids)` is the tokenizer's decode; `eos` tokens
    add no text."""

    def __init__(self, decode: Callable[[Sequence[int]], str], eos: int | None, stops: Sequence[str] = ()):
        self.decode, self.eos, self.stops = decode, eos, tuple(stops)
        self.tokens: list[int] = []
        self.pending: list[int] = []  # tokens whose text has not been shown yet
        self.shown = ""
        self.stopped = False  # a stop string was reached

    def text(self) -> str:
        """The whole text so far, cut before a stop string."""
        text = self.decode([t for t in self.tokens if t != self.eos])
        cut = first_stop(text, self.stops) if self.stops else -1
        return text if cut < 0 else text[:cut]

    def add(self, token: int) -> str:
        """Take one generated token; return the text that may be shown now ("" if none)."""
        self.tokens.append(int(token))
        if int(token) == self.eos:
            return ""
        self.pending.append(int(token))
        full = self.decode([t for t in self.tokens if t != self.eos])
        if full.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next token
            return ""
        visible = full
        if self.stops:
            cut = first_stop(full, self.stops)
            if cut >= 0:
                self.stopped, visible = True, full[:cut]
            else:
                visible = full[: len(full) - partial_stop(full, self.stops)]
        return self._show(visible)

    def flush(self) -> str:
        """The rest of the text once the request has ended (an incomplete character, a held-back
        beginning of a stop string that never completed)."""
        return self._show(self.text())

    def take_pending(self) -> tuple[int, ...]:
        pending, self.pending = tuple(self.pending), []
        return pending

    def _show(self, visible: str) -> str:
        if len(visible) > len(self.shown) and visible.startswith(self.shown):
            chunk, self.shown = visible[len(self.shown):], visible
            return chunk
        return ""
