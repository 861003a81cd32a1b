"""One request checked and preprocessed before it joins a batch.

A server prepares each request as it arrives (image decoding and resizing, the chat template,
every limit), outside the pipeline's lock and in parallel with the batch that is running, so
bad input is refused before it waits and the engine call does nothing but run the engines.
The fake prompt-table ids depend on the request's place in its batch, so they are filled in
when the batch is formed (`Inputs.fill_image`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .anyres import Layout
from .errors import UserError
from .generation import Sampling


@dataclass(frozen=True)
class Prepared:
    """chat_ids: the rendered chat with its one image placeholder; pixels: the image's views
    (1 for LLaVA-1.5; base view + crops for LLaVA-NeXT), (views, 3, S, S); visual_tokens: the
    image's tokens in the prompt; pruning_text: what a prompt-aware vision graph embeds."""

    chat_ids: tuple[int, ...]
    pixels: np.ndarray
    size: tuple[int, int]
    layout: Layout | None
    visual_tokens: int
    pruning_text: str
    sampling: Sampling

    @property
    def prompt_tokens(self) -> int:
        """Prompt length in the decoder: text tokens plus the image's visual tokens."""
        return len(self.chat_ids) - 1 + self.visual_tokens


def prepare(pipe, image: Any, prompt: str | None, messages: Sequence[Any] | None, sampling: Sampling) -> Prepared:
    """`image` with either `prompt` (one question about it) or `messages` (an OpenAI-style chat
    whose one image part is `{"type": "image"}`) for `pipe` (a Pipeline)."""
    inputs, engine = pipe.inputs, pipe.engine
    if (prompt is None) == (messages is None):
        raise UserError("give either a prompt or a chat of messages")
    if messages is None:
        chat = inputs.prompts.image_question(prompt)
        ids, pruning_text = inputs.prompts.chat_ids(chat), chat[0]["content"][1]["text"]
        inputs.image_position(ids)
    else:
        ids, pruning_text = inputs.chat_ids(messages)
    dtype = pipe.vision.input_dtype
    limit = engine.decoder.max_input_len
    k = engine.visual_tokens
    if inputs.anyres is None:
        if len(ids) - 1 + k > limit:  # refused before the image is decoded
            raise UserError(_too_long(len(ids) - 1 + k, k, limit))
        pixels, size, layout, count = inputs.pixel_values([image], dtype), (0, 0), None, k
    else:
        batch = inputs.anyres_views([image], dtype)
        pixels, size, layout, count = batch.views[0], batch.sizes[0], batch.layouts[0], batch.counts[0]
        if not 0 < count <= k:
            raise UserError(f"an image of {count} visual tokens does not fit the engine's {k} per request")
        if len(ids) - 1 + count > limit:
            raise UserError(_too_long(len(ids) - 1 + count, count, limit))
    return Prepared(tuple(ids), pixels, size, layout, count, pruning_text, sampling)


def _too_long(total: int, image: int, limit: int) -> str:
    return (f"the prompt is {total} tokens ({image} image + {total - image} text), longer than the engine's "
            f"--max-input-len {limit}")
