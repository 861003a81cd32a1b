"""The prompt's CLIP text embedding, which HiPrune++ vision engines take as `text_embeds`.

The build exports the CLIP text tower into the engine directory (`text.onnx`, `text.engine`,
`text_tokenizer/`, config.json's `text` section), so every backend reads the prompt the same
way: `chunk_ids` cuts it into 77-token chunks, the backend's text tower embeds each chunk, and
the prompt's embedding is the chunks' mean, L2-normalised. The torch backend runs the HF text
model from the recorded source instead of the graph: it is the reference the graphs are
compared against.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .backends.base import TextBackend
from .contract import EngineDir, TextSection
from .errors import EngineDirError, UserError

CONTEXT_LENGTH = 77  # CLIP's text context: [BOS] + 75 tokens + [EOS]


def chunk_ids(tokenizer, prompt: str, context: int = CONTEXT_LENGTH, *, bos: int, eos: int, pad: int) -> np.ndarray:
    """(C, context) int64: the prompt's tokens (no special tokens, no truncation) in pieces of
    context - 2, each as [bos] + piece + [eos] + padding. An empty prompt is one chunk, so
    every prompt has an embedding; the one rule all backends share."""
    tokens = tokenizer.encode(prompt, add_special_tokens=False)
    width = context - 2
    pieces = [tokens[i:i + width] for i in range(0, len(tokens), width)] or [[]]
    out = np.full((len(pieces), context), pad, dtype=np.int64)
    for row, piece in enumerate(pieces):
        out[row, :len(piece) + 2] = [bos, *piece, eos]
    return out


def mean_normalised(chunk_embeds: np.ndarray) -> np.ndarray:
    """(C, D) projected chunk embeddings -> (D,) float32 unit vector (the mean's direction)."""
    mean = np.asarray(chunk_embeds, dtype=np.float32).mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def text_section(engine: EngineDir) -> TextSection:
    if engine.text is None:
        raise EngineDirError(f"{engine.path} is a hiprune++ engine directory without the exported CLIP text tower "
                             "(no `text` section in config.json): rebuild it with this release")
    return engine.text


class TextEmbedder:
    """prompts -> (B, D) float32 unit vectors, one prompt at a time, so a batch equals its
    requests alone (no cross-prompt padding, no batch-size-dependent kernels)."""

    @classmethod
    def for_backend(cls, engine: EngineDir, backend, threads: int = 0) -> "TextEmbedder":
        """With `backend`'s text tower (a module from runtime.backends.provider); the engine
        directory's text section is checked before anything is loaded."""
        text_section(engine)
        return cls(engine, backend.text(engine, threads))

    def __init__(self, engine: EngineDir, tower: TextBackend):
        from .tokenizer import Tokenizer

        self.section = section = text_section(engine)
        self.tower = tower
        self.tokenizer = Tokenizer.from_dir(engine.folder(section.tokenizer, "text tokenizer"))
        self.context, self.max_chunks = section.context_length, section.max_chunks
        self.ids = {"bos": section.bos_token_id, "eos": section.eos_token_id, "pad": section.pad_token_id}

    @property
    def backend(self) -> str:
        return self.tower.name

    def chunks(self, prompt: str) -> np.ndarray:
        ids = chunk_ids(self.tokenizer, prompt, self.context, **self.ids)
        if len(ids) > self.max_chunks:
            limit = self.max_chunks * (self.context - 2)
            raise UserError(f"the prompt is {len(ids)} CLIP chunks long; the text engine takes at most "
                            f"{self.max_chunks} ({limit} CLIP tokens): shorten the prompt")
        return ids

    def chunk_embeds(self, prompt: str) -> np.ndarray:
        """(C, D): the tower's projected, un-normalised embedding of each chunk."""
        return np.asarray(self.tower(self.chunks(prompt)), dtype=np.float32)

    def __call__(self, prompts: Sequence[str] | str) -> np.ndarray:
        """(len(prompts), D), each distinct prompt embedded once (a LLaVA-NeXT image repeats its
        prompt for every one of its views)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        unique = list(dict.fromkeys(prompts))
        rows = np.stack([mean_normalised(self.chunk_embeds(p)) for p in unique])
        return rows[[unique.index(p) for p in prompts]]
