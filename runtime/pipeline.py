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
from .backends.base import StepDecoder
from .detokenize import RequestText
from .generation import Sampling, StepTimes, generate_steps
from .inputs import AnyresBatch, Inputs
from .requests import Prepared, prepare
from .results import Backends, Generation, GenerationStream, StreamChunk, Timings

DEFAULT_NEW_TOKENS = 64  # capped by the engine's --max-output-len

__all__ = ["BACKENDS", "DEFAULT_NEW_TOKENS", "Generation", "GenerationStream", "Pipeline", "Prepared", "Sampling",
           "StreamChunk", "Timings"]


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

    def sampling(self, max_new_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, ignore_eos: bool = False, stop: str | Sequence[str] = ()) -> Sampling:
        """Checked sampling settings; max_new_tokens=None: 64, capped by the engine's --max-output-len."""
        limit = self.engine.decoder.max_output_len
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_NEW_TOKENS, limit)
        sampling = Sampling(max_new_tokens, temperature, top_p, seed, ignore_eos, stop)
        if sampling.max_new_tokens > limit:
            raise UserError(f"--max-new-tokens {max_new_tokens} exceeds the engine's --max-output-len {limit}")
        return sampling

    def prepare(self, image, prompt: str | None = None, *, messages: Sequence[Any] | None = None,
                sampling: Sampling | None = None) -> Prepared:
        """One request checked and preprocessed, ready for `run`: `image` with a `prompt` or an
        OpenAI-style chat (`messages`, exactly one `{"type": "image"}` part, in a user message;
        prompt-aware pruning embeds the last user message's text). Thread-safe and lock-free:
        a server prepares requests while a batch runs. Over-long prompts are refused here."""
        return prepare(self, image, prompt, messages, sampling if sampling is not None else self.sampling())

    @property
    def mixed_sampling(self) -> bool:
        """Whether one batch may mix greedy and sampled requests with different settings (every
        step-level decoder); TensorRT-LLM samples a whole batch one way."""
        return isinstance(self.decoder, StepDecoder)

    # ---- visual tokens ----------------------------------------------------------------------
    def _text_embeds(self, prompts: Sequence[str]) -> np.ndarray | None:
        return self.text(prompts) if self.text is not None else None

    def _ids(self, requests: Sequence[Prepared]) -> list[list[int]]:
        k = self.engine.visual_tokens
        return [self.inputs.fill_image(r.chat_ids, b, k, r.visual_tokens) for b, r in enumerate(requests)]

    def _visual(self, requests: Sequence[Prepared]) -> _Visual:
        if self.inputs.anyres is not None:
            return self._visual_anyres(requests)
        px = np.concatenate([r.pixels for r in requests])
        t0 = time.perf_counter()
        out = self.vision(px, text_embeds=self._text_embeds([r.pruning_text for r in requests]))
        vision_s = time.perf_counter() - t0
        bsz, k, hid = out.features.shape
        if k != self.engine.visual_tokens:
            raise EngineDirError(f"the vision engine gives {k} tokens but the decoder was built for "
                                 f"{self.engine.visual_tokens}: the engine directory is inconsistent; rebuild it")
        kept = [[int(i) for i in row] for row in out.kept]
        return _Visual(self._ids(requests), out.features.reshape(bsz * k, hid), kept, [k] * bsz, vision_s)

    def _visual_anyres(self, requests: Sequence[Prepared]) -> _Visual:
        batch = AnyresBatch([r.pixels for r in requests], [r.size for r in requests], [r.layout for r in requests],
                            [r.visual_tokens for r in requests])
        t0 = time.perf_counter()
        per_image, kept = self.image_features(batch, [r.pruning_text for r in requests])
        vision_s = time.perf_counter() - t0
        k = self.engine.visual_tokens
        table = np.zeros((len(per_image) * k, per_image[0].shape[-1]), per_image[0].dtype)
        for b, (feats, count) in enumerate(zip(per_image, batch.counts)):
            if feats.shape[0] != count:
                raise EngineDirError(f"image {b} gave {feats.shape[0]} visual tokens, {count} were expected")
            table[b * k: b * k + count] = feats
        return _Visual(self._ids(requests), table, kept, list(batch.counts), vision_s)

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
    def run(self, requests: Sequence[Prepared]) -> GenerationStream:
        """One engine call for a batch of prepared requests, each with its own sampling (max
        tokens, temperature, top_p, seed, stop strings), each getting exactly the tokens it gets
        alone. Iterating yields StreamChunks as tokens arrive; a request's last chunk carries its
        Generation (`chunk.generation`) as soon as it ends, while the others go on.
        `stream.cancel(i)` ends request i at the next step (finish_reason "cancelled"), so it
        stops costing decode steps; the step loop ends when every request has ended. The batch
        runs under the pipeline's lock when iteration starts."""
        requests = list(requests)
        if not requests:
            raise UserError("no requests given")
        if len(requests) > self.engine.max_batch:
            raise UserError(f"batch of {len(requests)} exceeds the engine's max batch {self.engine.max_batch}")
        for r in requests:
            if not isinstance(r, Prepared):
                raise UserError(f"run takes requests from Pipeline.prepare, not {type(r).__name__}")
        samplings = [r.sampling for r in requests]
        if not self.mixed_sampling and not all(samplings[0].same_draw(s) for s in samplings):
            raise UserError(f"the {self.decoder.name} decoder samples a whole batch one way: give its requests "
                            "the same temperature, top_p and seed")
        done = np.zeros(len(requests), bool)
        cancelled = np.zeros(len(requests), bool)
        results: list[Generation | None] = [None] * len(requests)

        def cancel(index: int) -> None:
            if not 0 <= index < len(requests):
                raise UserError(f"no request {index} in a batch of {len(requests)}")
            cancelled[index] = True
            done[index] = True  # read by the step loop before its next step

        def chunks() -> Iterator[StreamChunk]:
            with self._lock:
                times = StepTimes()
                visual = self._visual(requests)
                eos = self.inputs.eos_token_id
                texts = [RequestText(self.inputs.decode, None if r.sampling.ignore_eos else eos, r.sampling.stop)
                         for r in requests]
                ended = [False] * len(requests)
                steps = generate_steps(self.decoder, visual.ids, visual.table, self.engine.visual_tokens, samplings,
                                       eos=eos, pad=self.inputs.pad_token_id, times=times, done=done)

                def finish(b: int, reason: str) -> StreamChunk:
                    ended[b] = True
                    text = texts[b]
                    rest = text.flush()
                    timings = Timings(visual.vision_s, times.prefill_s, tuple(times.decode_s[:max(0, len(text.tokens) - 1)]))
                    results[b] = Generation(text.text(), list(text.tokens), visual.kept[b], timings, visual.counts[b],
                                            len(visual.ids[b]), reason)
                    return StreamChunk(b, rest, text.take_pending(), results[b])

                for step in steps:
                    for b, token in enumerate(step):
                        if ended[b]:
                            continue
                        if cancelled[b]:
                            yield finish(b, "cancelled")
                            continue
                        text = texts[b]
                        new = text.add(int(token))
                        if new:
                            yield StreamChunk(b, new, text.take_pending())
                        if text.stopped or int(token) == text.eos:
                            done[b] = True
                            yield finish(b, "stop")
                        elif len(text.tokens) >= requests[b].sampling.max_new_tokens:
                            done[b] = True
                            yield finish(b, "length")
                for b in range(len(requests)):  # cancelled before their first token, or the decoder ran short
                    if not ended[b]:
                        yield finish(b, "cancelled" if cancelled[b] else "length")

        return GenerationStream(chunks(), lambda: list(results), cancel)

    def generate(self, images, prompts, max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, ignore_eos: bool = False,
                 stop: str | Sequence[str] = ()) -> Generation | list[Generation]:
        """A single image -> one Generation; a list of images -> a list (one per image, each equal
        to that request alone). max_new_tokens=None: 64, capped by the engine's --max-output-len."""
        stream = self._stream(images, prompts, max_new_tokens, temperature, top_p, seed, ignore_eos, stop)
        for _ in stream:
            pass
        return stream.results[0] if stream.single else stream.results

    def stream(self, images, prompts, max_new_tokens: int | None = None, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, stop: str | Sequence[str] = ()) -> GenerationStream:
        """Like `generate`, but iterating the result yields StreamChunks as tokens arrive (text is
        held back while a multi-byte character is incomplete); afterwards `.results` holds the
        Generations. Requests are checked here, before anything runs."""
        return self._stream(images, prompts, max_new_tokens, temperature, top_p, seed, False, stop)

    def _stream(self, images, prompts, *sampling_args) -> GenerationStream:
        images, prompts, single = self._requests(images, prompts)
        sampling = self.sampling(*sampling_args)
        stream = self.run([self.prepare(image, prompt, sampling=sampling) for image, prompt in zip(images, prompts)])
        stream.single = single
        return stream
