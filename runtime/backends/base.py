"""What a backend provides, declared rather than probed: a vision backend, a decoder (stepwise,
driven by the pipeline's generation loop, or whole-sequence like TensorRT-LLM) and, for
prompt-aware pruning, a text tower. Every backend computes the same thing from the same engine
directory; only the arithmetic library differs, so parity tests compare results exactly."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np


@dataclass(frozen=True)
class VisionOutput:
    """features (V, R, H) in the LLM's dtype and kept patch indices (V, R) int64, -1 where a
    row is padding (LLaVA-NeXT views whose branch keeps fewer than R tokens)."""

    features: np.ndarray
    kept: np.ndarray


class VisionBackend(ABC):
    """Runs the vision graph of an engine directory. `takes_text` / `takes_budget` declare the
    graph's optional inputs (prompt-aware pruning; LLaVA-NeXT per-view budgets)."""

    name: ClassVar[str]
    # Whether the backend packs LLaVA-NeXT's unpruned views itself (the torch reference runs the
    # HF model's own get_image_features); otherwise runtime/anyres.py packs them.
    packs_stock_anyres: ClassVar[bool] = False
    takes_text: bool = False
    takes_budget: bool = False

    @property
    @abstractmethod
    def input_dtype(self) -> str:
        """numpy dtype name of `pixel_values`."""

    @abstractmethod
    def __call__(self, pixel_values: np.ndarray, *, text_embeds: np.ndarray | None = None,
                 view_budget: np.ndarray | None = None) -> VisionOutput:
        """Pixel values (V, 3, S, S); `text_embeds` (V, D) float32, each row's prompt embedding
        (when `takes_text`); `view_budget` (V,) int64, each view's K_view (when `takes_budget`)."""

    def stock_anyres_features(self, pixel_values: np.ndarray, image_sizes) -> list[np.ndarray]:
        raise NotImplementedError(f"the {self.name} backend does not pack LLaVA-NeXT views itself")


class TextBackend(ABC):
    """CLIP text tower: (C, context) int64 token ids -> (C, D) float32 projected embeddings."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, input_ids: np.ndarray) -> np.ndarray: ...


class StepDecoder(ABC):
    """One forward per generation step; the pipeline owns sampling and stopping.
    `step` takes the prompt-table feeds of runtime.contract.Tensors and returns (B, vocab)
    float32 logits of the last position; the KV cache stays inside the decoder."""

    name: ClassVar[str]

    @abstractmethod
    def start(self, batch: int) -> None:
        """Forget any cached keys/values: a new batch of requests begins."""

    @abstractmethod
    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...

    def keep_rows(self, rows: np.ndarray) -> bool:
        """Keep only these rows (ascending indices into the current batch) of the cached
        keys/values, so requests that ended stop costing compute; the next step's feeds have
        len(rows) rows. False: this decoder cannot, and the loop keeps feeding the ended rows
        padding instead (same tokens for the others, more work)."""
        return False


class SequenceDecoder(ABC):
    """A decoder that runs the whole generation loop itself (TensorRT-LLM)."""

    name: ClassVar[str]

    @abstractmethod
    def generate_ids(self, prompts: Sequence[Sequence[int]], table: np.ndarray, k: int, max_new_tokens: int,
                     temperature: float, top_p: float, end_id: int, pad_id: int) -> np.ndarray:
        """(B, max_new_tokens) new token ids, padded with end_id after a request finishes."""


Decoder = StepDecoder | SequenceDecoder
