"""`Pipeline`: images + prompts -> text, over any vision and decoder backend.

LLaVA-1.5: the vision engine gives each image's K tokens, which fill the decoder's prompt table.
LLaVA-NeXT engines differ only before the decoder: every view of every image goes through the
vision backend in one run, runtime/anyres.py turns the views into each image's tokens, and the
prompt table keeps a stride of K (the most any image can take) rows per request, of which each
request uses its own image's count.

One Pipeline may be shared by threads: generations run one after another under a lock (the
decoder's KV cache and the engines' execution contexts are per-pipeline state).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .backends import BACKENDS, Choice, choose, provider
from .backends.base import Decoder, VisionBackend
from .contract import EngineDir, open_engine_dir
from .errors import EngineDirError, UserError
from .generation import Sampling, StepTimes, generate_steps
from .inputs import Inputs
from .results import Backends, Generation, GenerationStream, StreamChunk, Timings

DEFAULT_NEW_TOKENS = 64  # capped by the engine's --max-output-len

__all__ = ["BACKENDS", "DEFAULT_NEW_TOKENS", "Generation", "GenerationStream", "Pipeline", "StreamChunk", "Timings"]


def _verify_used_files(engine: EngineDir, parts, own_decoder: bool) -> None:
    from .contract.verify import files_under, verify

    used = parts.files(engine)
    names = used["vision"] + used["text"] + (used["decoder"] if own_decoder else [])
    names += files_under(engine, engine.vision.preprocess.processor)
    if engine.text is not None:
        names += files_under(engine, engine.text.tokenizer)
    if engine.anyres is not None and engine.anyres.image_newline:
        names.append(engine.anyres.image_newline)
    verify(engine, names)


@dataclass
class _Visual:
    """The vision stage of one batch: prompt ids, prompt-table rows, and what to report."""

    ids: list[list[int]]
    table: np.ndarray
    kept: list[Any]
    counts: list[int]
    vision_s: float


class Pipeline:
    def __init__(self, engine: EngineDir, vision: VisionBackend, decoder: Decoder, inputs: Inputs,
                 backends: Backends, text=None):
        self.engine, self.vision, self.decoder, self.inputs = engine, vision, decoder, inputs
        self.backends = backends
        self.text = text  # TextEmbedder for prompt-aware vision graphs, else None
        self._newline_row: np.ndarray | None = None  # LLaVA-NeXT image_newline, read on first use
        self._lock = threading.RLock()

    @property
    def backend(self) -> str:
        """The vision/decoder backend's name (onnxruntime, tensorrt or torch)."""
        return self.backends.vision

    @classmethod
    def from_dir(cls, engine_dir: str | Path, backend: str = "auto", *, threads: int = 0,
                 trtllm_engine_dir: str | Path | None = None, verify: bool = True) -> "Pipeline":
        """`backend`: auto (TensorRT when the directory's engines can run here, else ONNX Runtime),
        tensorrt, onnxruntime or torch (the reference). `trtllm_engine_dir` swaps the decoder for a
        TensorRT-LLM engine (same prompt table). `verify`: check every file about to be used
        against config.json's size and sha256 first (cached; False skips it)."""
        engine = open_engine_dir(engine_dir)
        choice: Choice = choose(engine, backend)
        parts = provider(choice.backend)
        parts.preflight(engine)  # cheap compatibility checks before any file is hashed or loaded
        if verify:
            _verify_used_files(engine, parts, trtllm_engine_dir is None)
        inputs = Inputs(engine)
        vision = parts.vision(engine, threads)
        text = None
        if vision.takes_text:
            from .text_embeds import TextEmbedder

            text = TextEmbedder.for_backend(engine, parts, threads)
        if trtllm_engine_dir is not None:
            from .trtllm import TrtLlmDecoder

            decoder = TrtLlmDecoder(trtllm_engine_dir, engine.decoder)
        else:
            decoder = parts.decoder(engine, threads)
        backends = Backends(vision.name, decoder.name, choice.reason)
        return cls(engine, vision, decoder, inputs, backends, text)

    # ---- request checks ---------------------------------------------------------------------
    def _requests(self, images, prompts) -> tuple[list, list[str], bool]:
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        elif isinstance(prompts, (list, tuple)):
            prompts = list(prompts)
        else:
            raise UserError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
        if not images:
            raise UserError("no images given")
        if len(prompts) != len(images):
            raise UserError(f"{len(images)} images but {len(prompts)} prompts")
        for p in prompts:
            if not isinstance(p, str):
                raise UserError(f"a prompt must be a string, got {type(p).__name__}")
        if len(images) > self.engine.max_batch:
            raise UserError(f"batch of {len(images)} exceeds the engine's max batch {self.engine.max_batch}")
        return images, prompts, single

    def _sampling(self, max_new_tokens, temperature, top_p, seed, ignore_eos) -> Sampling:
        limit = self.engine.decoder.max_output_len
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_NEW_TOKENS, limit)
        sampling = Sampling(max_new_tokens, temperature, top_p, seed, ignore_eos)
        if sampling.max_new_tokens > limit:
            raise UserError(f"--max-new-tokens {max_new_tokens} exceeds the engine's --max-output-len {limit}")
        return sampling

    def _encode(self, prompts: Sequence[str], counts: Sequence[int] | None = None) -> list[list[int]]:
        """Prompt ids with each request's fake prompt-table ids (`counts`: visual tokens of each
        request, default the engine's K); over-long prompts are refused before any compute."""
        dec = self.engine.decoder
        k = self.engine.visual_tokens
        counts = list(counts) if counts is not None else [k] * len(prompts)
        ids = [self.inputs.prompt_ids(p, i, k, n) for i, (p, n) in enumerate(zip(prompts, counts))]
        for p, n in zip(ids, counts):
            if len(p) > dec.max_input_len:
                raise UserError(f"the prompt is {len(p)} tokens ({n} image + {len(p) - n} text), longer than "
                                f"the engine's --max-input-len {dec.max_input_len}")
        return ids

    # ---- visual tokens ----------------------------------------------------------------------
    def _text_embeds(self, prompts: Sequence[str]) -> np.ndarray | None:
        return self.text(prompts) if self.text is not None else None

    def _visual(self, images, prompts) -> _Visual:
        if self.inputs.anyres is not None:
            return self._visual_anyres(images, prompts)
        ids = self._encode(prompts)
        px = self.inputs.pixel_values(images, self.vision.input_dtype)
        t0 = time.perf_counter()
        out = self.vision(px, text_embeds=self._text_embeds(prompts))
        vision_s = time.perf_counter() - t0
        bsz, k, hid = out.features.shape
        if k != self.engine.visual_tokens:
            raise EngineDirError(f"the vision engine gives {k} tokens but the decoder was built for "
                                 f"{self.engine.visual_tokens}: the engine directory is inconsistent; rebuild it")
        kept = [[int(i) for i in row] for row in out.kept]
        return _Visual(ids, out.features.reshape(bsz * k, hid), kept, [k] * bsz, vision_s)

    def _visual_anyres(self, images, prompts) -> _Visual:
        batch = self.inputs.anyres_views(images, self.vision.input_dtype)
        ids = self._encode(prompts, batch.counts)
        t0 = time.perf_counter()
        per_image, kept = self.image_features(batch, prompts)
        vision_s = time.perf_counter() - t0
        k = self.engine.visual_tokens
        table = np.zeros((len(per_image) * k, per_image[0].shape[-1]), per_image[0].dtype)
        for b, (feats, count) in enumerate(zip(per_image, batch.counts)):
            if feats.shape[0] != count:
                raise EngineDirError(f"image {b} gave {feats.shape[0]} visual tokens, {count} were expected")
            table[b * k: b * k + count] = feats
        return _Visual(ids, table, kept, list(batch.counts), vision_s)

    def image_features(self, batch, prompts) -> tuple[list[np.ndarray], list[list[list[int]]]]:
        """LLaVA-NeXT: every view of the batch through the vision backend in one run, then each
        image's (tokens, H) sequence and its kept indices per view (runtime/anyres.py)."""
        from .anyres import arrange

        spec = self.inputs.anyres
        views = [layout.views for layout in batch.layouts]
        if spec.merge == "spatial_unpad" and self.vision.packs_stock_anyres:  # torch: HF's own path
            feats = self.vision.stock_anyres_features(np.concatenate(batch.views), batch.sizes)
            return feats, [[list(range(spec.patches))] * n for n in views]
        budget = None
        if self.vision.takes_budget:
            budget = np.array([spec.budget(n)[0] for n in views for _ in range(n)], np.int64)
        view_prompts = [p for p, n in zip(prompts, views) for _ in range(n)]
        out = self.vision(np.concatenate(batch.views), text_embeds=self._text_embeds(view_prompts), view_budget=budget)
        result, kept_out, start = [], [], 0
        for layout, size in zip(batch.layouts, batch.sizes):
            end = start + layout.views
            merged, per_view = arrange(spec, out.features[start:end], out.kept[start:end], layout, size,
                                       self._newline())
            result.append(merged)
            kept_out.append(per_view)
            start = end
        return result, kept_out

    def _newline(self) -> np.ndarray | None:
        """LLaVA-NeXT's image_newline (H,) from the engine directory (stock path only)."""
        spec = self.inputs.anyres
        if spec.merge != "spatial_unpad" or not spec.newline_file:
            return None
        if self._newline_row is None:
            path = self.engine.file(spec.newline_file, "image_newline file")
            try:
                row = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise EngineDirError(f"cannot read {path}: {exc}") from None
            if row.ndim != 1:
                raise EngineDirError(f"{path} must hold one (hidden,) vector, got shape {row.shape}")
            self._newline_row = row
        return self._newline_row

    # ---- generation -------------------------------------------------------------------------
    def _steps(self, images, prompts, sampling: Sampling, times: StepTimes) -> tuple[_Visual, Iterator[np.ndarray]]:
        visual = self._visual(images, prompts)
        steps = generate_steps(self.decoder, visual.ids, visual.table, self.engine.visual_tokens, sampling,
                               eos=self.inputs.eos_token_id, pad=self.inputs.pad_token_id, times=times)
        return visual, steps

    def _finish(self, tokens: list[list[int]], visual: _Visual, times: StepTimes, sampling: Sampling) -> list[Generation]:
        out = []
        eos = -1 if sampling.ignore_eos else self.inputs.eos_token_id
        timings = Timings(visual.vision_s, times.prefill_s, tuple(times.decode_s))
        for b, seq in enumerate(tokens):
            stopped = eos in seq
            if stopped:
                seq = seq[: seq.index(eos) + 1]
            text = self.inputs.decode([t for t in seq if t != eos])
            out.append(Generation(text, [int(t) for t in seq], visual.kept[b], timings, visual.counts[b],
                                  len(visual.ids[b]), "stop" if stopped else "length"))
        return out

    def generate(self, images, prompts, max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, ignore_eos: bool = False) -> Generation | list[Generation]:
        """A single image -> one Generation; a list of images -> a list (one per image, each equal
        to that request alone). max_new_tokens=None: 64, capped by the engine's --max-output-len."""
        images, prompts, single = self._requests(images, prompts)
        sampling = self._sampling(max_new_tokens, temperature, top_p, seed, ignore_eos)
        with self._lock:
            times = StepTimes()
            visual, steps = self._steps(images, prompts, sampling, times)
            tokens: list[list[int]] = [[] for _ in images]
            for step in steps:
                for b, t in enumerate(step):
                    tokens[b].append(int(t))
            results = self._finish(tokens, visual, times, sampling)
        return results[0] if single else results

    def stream(self, images, prompts, max_new_tokens: int | None = None, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0) -> GenerationStream:
        """Like `generate`, but iterating the result yields StreamChunks as tokens arrive (text is
        held back while a multi-byte character is incomplete); afterwards `.results` holds the
        Generations. Requests are checked here, before anything runs."""
        images, prompts, _ = self._requests(images, prompts)
        sampling = self._sampling(max_new_tokens, temperature, top_p, seed, False)
        state: dict[str, Any] = {}

        def chunks() -> Iterator[StreamChunk]:
            with self._lock:
                times = StepTimes()
                visual, steps = self._steps(images, prompts, sampling, times)
                tokens: list[list[int]] = [[] for _ in images]
                pending: list[list[int]] = [[] for _ in images]
                shown = ["" for _ in images]
                finished = [False for _ in images]
                eos = self.inputs.eos_token_id
                for step in steps:
                    for b, t in enumerate(step):
                        if finished[b]:
                            continue
                        if int(t) == eos:
                            finished[b] = True
                            tokens[b].append(int(t))
                            continue
                        tokens[b].append(int(t))
                        pending[b].append(int(t))
                        text = self.inputs.decode([x for x in tokens[b] if x != eos])
                        if text.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next token
                            continue
                        if len(text) > len(shown[b]) and text.startswith(shown[b]):
                            chunk, shown[b] = text[len(shown[b]):], text
                            yield StreamChunk(b, chunk, tuple(pending[b]))
                            pending[b] = []
                for b in range(len(images)):  # flush what was held back (an incomplete sequence at the end)
                    text = self.inputs.decode([x for x in tokens[b] if x != eos])
                    if len(text) > len(shown[b]) and text.startswith(shown[b]):
                        yield StreamChunk(b, text[len(shown[b]):], tuple(pending[b]))
                state["results"] = self._finish(tokens, visual, times, sampling)

        return GenerationStream(chunks(), lambda: state["results"])
