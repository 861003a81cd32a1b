"""`Pipeline`: images + prompts -> text, over any vision and decoder backend.

One generation loop serves every step-level decoder, so the only thing that differs between
backends is the arithmetic; parity tests compare token ids exactly. Requests in a batch are
left-padded and masked, which makes each request's result that of a batch of one.

LLaVA-NeXT engines differ only before the decoder: every view of every image goes through the
vision backend in one run, runtime/anyres.py turns the views into each image's tokens, and the
prompt table keeps a stride of K (the most any image can take) rows per request, of which each
request uses its own image's count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from exporter.errors import UserError

from .engine_dir import EngineDir, open_engine_dir
from .inputs import Inputs
from .optional import have

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
DEFAULT_NEW_TOKENS = 64  # capped by the engine's --max-output-len


@dataclass
class Generation:
    """kept_indices: the kept patch indices (LLaVA-1.5), or one list per view, base view first
    (LLaVA-NeXT). visual_tokens: the image's tokens in the prompt."""

    text: str
    token_ids: list[int]
    kept_indices: list[int] | list[list[int]]
    timings: dict[str, Any] = field(default_factory=dict)
    visual_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": self.token_ids, "kept_indices": self.kept_indices,
                "visual_tokens": self.visual_tokens, "timings": self.timings}


def _resolve(engine: EngineDir, backend: str) -> str:
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    built = engine.config.get("engine", {}).get("built") and engine.vision.get("engine") and engine.decoder.get("engine")
    if built and (have("tensorrt") or have("tensorrt_rtx_bindings")):
        import torch

        if torch.cuda.is_available():
            return "tensorrt"
    return "onnxruntime"


def _sample(logits: np.ndarray, temperature: float, top_p: float, rngs: list[np.random.Generator]) -> np.ndarray:
    """Greedy, or nucleus sampling with one generator per request (so a request samples the
    same tokens alone or in a batch)."""
    if temperature <= 0:
        return logits.argmax(axis=-1)
    out = np.empty(logits.shape[0], np.int64)
    for b, row in enumerate(logits.astype(np.float64) / temperature):
        rng = rngs[b]
        p = np.exp(row - row.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        cut = order[: int(np.searchsorted(cum, top_p) + 1)]
        out[b] = rng.choice(cut, p=p[cut] / p[cut].sum())
    return out


class Pipeline:
    def __init__(self, engine: EngineDir, vision, decoder, inputs: Inputs, backend: str):
        self.engine, self.vision, self.decoder, self.inputs, self.backend = engine, vision, decoder, inputs, backend
        self._newline_row: np.ndarray | None = None  # LLaVA-NeXT image_newline, read on first use

    @classmethod
    def from_dir(cls, engine_dir: str | Path, backend: str = "auto", *, threads: int = 0,
                 trtllm_engine_dir: str | Path | None = None) -> "Pipeline":
        """`trtllm_engine_dir` swaps the decoder for a TensorRT-LLM engine (same prompt table)."""
        engine = open_engine_dir(engine_dir)
        name = _resolve(engine, backend)
        from .decoder_backends import make_decoder
        from .vision_backends import make_vision

        inputs = Inputs(engine)
        vision = make_vision(engine, name, threads)
        if trtllm_engine_dir is not None:
            from .trtllm import TrtLlmDecoder

            decoder = TrtLlmDecoder(trtllm_engine_dir, engine.decoder)
        else:
            decoder = make_decoder(engine, name, threads)
        return cls(engine, vision, decoder, inputs, name)

    # ---- request checks ---------------------------------------------------------------------
    def _requests(self, images, prompts) -> tuple[list, list[str], bool]:
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if not images:
            raise UserError("no images given")
        if len(prompts) != len(images):
            raise UserError(f"{len(images)} images but {len(prompts)} prompts")
        if len(images) > self.engine.max_batch:
            raise UserError(f"batch of {len(images)} exceeds the engine's max batch {self.engine.max_batch}")
        return images, prompts, single

    def _encode(self, prompts: Sequence[str], max_new_tokens: int,
                counts: Sequence[int] | None = None) -> list[list[int]]:
        """`counts`: visual tokens of each request (default: the engine's K for every one)."""
        dec = self.engine.decoder
        k = self.engine.visual_tokens
        counts = list(counts) if counts is not None else [k] * len(prompts)
        if max_new_tokens < 1:
            raise UserError("--max-new-tokens must be >= 1")
        if max_new_tokens > dec["max_output_len"]:
            raise UserError(f"--max-new-tokens {max_new_tokens} exceeds the engine's --max-output-len "
                            f"{dec['max_output_len']}")
        ids = [self.inputs.prompt_ids(p, i, k, n) for i, (p, n) in enumerate(zip(prompts, counts))]
        for p, n in zip(ids, counts):
            if len(p) > dec["max_input_len"]:
                raise UserError(f"the prompt is {len(p)} tokens ({n} image + {len(p) - n} text), longer than "
                                f"the engine's --max-input-len {dec['max_input_len']}")
        return ids

    # ---- visual tokens ----------------------------------------------------------------------
    def _visual(self, images, prompts, max_new_tokens, state) -> tuple[list[list[int]], np.ndarray]:
        """(prompt ids, prompt table (B*K, H)); fills state's vision_s, kept and counts."""
        if self.inputs.anyres is not None:
            return self._visual_anyres(images, prompts, max_new_tokens, state)
        ids = self._encode(prompts, max_new_tokens)  # reject bad prompts before any compute
        px = self.inputs.pixel_values(images, getattr(self.vision, "dtype", "float32"))
        t0 = time.perf_counter()
        feats, kept = self.vision(px, prompts)
        state["vision_s"] = time.perf_counter() - t0
        state["kept"] = [[int(i) for i in row] for row in kept]
        bsz, k, hid = feats.shape
        if k != self.engine.visual_tokens:
            raise UserError(f"the vision engine gives {k} tokens but the decoder was built for {self.engine.visual_tokens}")
        state["counts"] = [k] * bsz
        return ids, feats.reshape(bsz * k, hid)

    def _visual_anyres(self, images, prompts, max_new_tokens, state) -> tuple[list[list[int]], np.ndarray]:
        batch = self.inputs.anyres_views(images, getattr(self.vision, "dtype", "float32"))
        ids = self._encode(prompts, max_new_tokens, batch.counts)  # before the vision engine runs
        t0 = time.perf_counter()
        per_image, kept = self.image_features(batch, prompts)
        state["vision_s"] = time.perf_counter() - t0
        k = self.engine.visual_tokens
        table = np.zeros((len(per_image) * k, per_image[0].shape[-1]), per_image[0].dtype)
        for b, (feats, count) in enumerate(zip(per_image, batch.counts)):
            if feats.shape[0] != count:
                raise UserError(f"image {b} gave {feats.shape[0]} visual tokens, {count} were expected")
            table[b * k: b * k + count] = feats
        state["kept"], state["counts"] = kept, list(batch.counts)
        return ids, table

    def image_features(self, batch, prompts) -> tuple[list[np.ndarray], list[list[list[int]]]]:
        """LLaVA-NeXT: every view of the batch through the vision backend in one run, then each
        image's (tokens, H) sequence and its kept indices per view (runtime/anyres.py)."""
        from .anyres import arrange

        spec = self.inputs.anyres
        if spec.merge == "spatial_unpad" and hasattr(self.vision, "stock_features"):  # torch: HF's own path
            feats = self.vision.stock_features(np.concatenate(batch.views), batch.sizes)
            return feats, [[list(range(spec.patches))] * layout.views for layout in batch.layouts]
        views = [layout.views for layout in batch.layouts]
        budget = None
        if spec.merge == "spatial":
            budget = np.array([spec.budget(n)[0] for n in views for _ in range(n)], np.int64)
        view_prompts = [p for p, n in zip(prompts, views) for _ in range(n)]
        feats, kept = self.vision(np.concatenate(batch.views), view_prompts, view_budget=budget)
        out, kept_out, start = [], [], 0
        for layout, size in zip(batch.layouts, batch.sizes):
            end = start + layout.views
            merged, per_view = arrange(spec, feats[start:end], kept[start:end], layout, size, self._newline())
            out.append(merged)
            kept_out.append(per_view)
            start = end
        return out, kept_out

    def _newline(self) -> np.ndarray | None:
        """LLaVA-NeXT's image_newline (H,) from the engine directory (stock path only)."""
        spec = self.inputs.anyres
        if spec.merge != "spatial_unpad" or not spec.newline_file:
            return None
        if self._newline_row is None:
            path = self.engine.file(spec.newline_file, "image_newline file")
            try:
                row = np.load(path)
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot read {path}: {exc}") from None
            if row.ndim != 1:
                raise UserError(f"{path} must hold one (hidden,) vector, got shape {row.shape}")
            self._newline_row = row
        return self._newline_row

    # ---- generation -------------------------------------------------------------------------
    def _steps(self, images, prompts, max_new_tokens, temperature, top_p, seed, state,
               ignore_eos: bool = False) -> Iterator[np.ndarray]:
        """Yields the (B,) token ids of every step; fills `state` with timings and kept indices."""
        ids, table_rows = self._visual(images, prompts, max_new_tokens, state)
        bsz, k = len(ids), self.engine.visual_tokens
        if hasattr(self.decoder, "generate_ids"):  # whole-sequence decoders (TensorRT-LLM)
            t1 = time.perf_counter()
            tokens = self.decoder.generate_ids(ids, table_rows, k, max_new_tokens,
                                               temperature, top_p, self.inputs.eos_token_id, self.inputs.pad_token_id)
            state["prefill_s"], state["decode_s"] = time.perf_counter() - t1, []
            for column in tokens.T:
                yield column
            return
        width = max(len(p) for p in ids)
        pad = self.inputs.pad_token_id
        input_ids = np.full((bsz, width), pad, np.int64)
        mask = np.zeros((bsz, width), np.int64)
        for b, p in enumerate(ids):
            input_ids[b, width - len(p):] = p
            mask[b, width - len(p):] = 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        table = {"prompt_embedding_table": np.ascontiguousarray(table_rows),
                 "tasks": np.zeros(bsz, np.int64), "prompt_vocab_size": np.array([k], np.int64)}
        rngs = [np.random.default_rng(seed) for _ in range(bsz)]
        eos = -1 if ignore_eos else self.inputs.eos_token_id
        done = np.zeros(bsz, bool)
        self.decoder.start(bsz)
        state["decode_s"] = []
        t1 = time.perf_counter()
        logits = self.decoder.step({"input_ids": input_ids, "position_ids": positions, "attention_mask": mask, **table})
        for n in range(max_new_tokens):
            token = _sample(logits, temperature, top_p, rngs)
            token = np.where(done, pad, token)
            now = time.perf_counter()
            if n == 0:
                state["prefill_s"] = now - t1
            else:
                state["decode_s"].append(now - t1)
            yield token
            done |= token == eos
            if done.all() or n + 1 == max_new_tokens:
                return
            t1 = time.perf_counter()
            positions = positions[:, -1:] + 1
            mask = np.concatenate([mask, np.ones((bsz, 1), np.int64)], axis=1)
            logits = self.decoder.step({"input_ids": token[:, None].astype(np.int64), "position_ids": positions,
                                        "attention_mask": mask, **table})

    def _finish(self, tokens: list[list[int]], state, ignore_eos: bool = False) -> list[Generation]:
        out = []
        eos = -1 if ignore_eos else self.inputs.eos_token_id
        for b, seq in enumerate(tokens):
            if eos in seq:
                seq = seq[: seq.index(eos) + 1]
            timings = {"vision_s": state["vision_s"], "prefill_s": state.get("prefill_s", 0.0),
                       "ttft_s": state["vision_s"] + state.get("prefill_s", 0.0), "decode_s": state["decode_s"]}
            text = self.inputs.decode([t for t in seq if t != eos])
            out.append(Generation(text, [int(t) for t in seq], state["kept"][b], timings, state["counts"][b]))
        return out

    def generate(self, images, prompts, max_new_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
                 stream: bool = False, seed: int = 0, ignore_eos: bool = False):
        """max_new_tokens=None: 64, capped by the engine's --max-output-len.
        A single image -> one Generation (or, with stream=True, an iterator of text chunks);
        a list -> a list of Generations (stream=True: an iterator of (request, chunk) pairs)."""
        images, prompts, single = self._requests(images, prompts)
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_NEW_TOKENS, int(self.engine.decoder["max_output_len"]))
        if stream:
            return self._stream(images, prompts, max_new_tokens, temperature, top_p, seed, single)
        state: dict[str, Any] = {}
        tokens: list[list[int]] = [[] for _ in images]
        for step in self._steps(images, prompts, max_new_tokens, temperature, top_p, seed, state, ignore_eos):
            for b, t in enumerate(step):
                tokens[b].append(int(t))
        results = self._finish(tokens, state, ignore_eos)
        return results[0] if single else results

    def _stream(self, images, prompts, max_new_tokens, temperature, top_p, seed, single):
        state: dict[str, Any] = {}
        tokens: list[list[int]] = [[] for _ in images]
        shown = ["" for _ in images]
        finished = [False for _ in images]
        eos = self.inputs.eos_token_id
        for step in self._steps(images, prompts, max_new_tokens, temperature, top_p, seed, state):
            for b, t in enumerate(step):
                if finished[b]:
                    continue
                if int(t) == eos:
                    finished[b] = True
                    continue
                tokens[b].append(int(t))
                text = self.inputs.decode(tokens[b])
                if text.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next token
                    continue
                if len(text) > len(shown[b]) and text.startswith(shown[b]):
                    chunk, shown[b] = text[len(shown[b]):], text
                    yield chunk if single else (b, chunk)
        for b in range(len(images)):  # flush what was held back (an incomplete byte sequence at the end)
            text = self.inputs.decode(tokens[b])
            if len(text) > len(shown[b]) and text.startswith(shown[b]):
                yield text[len(shown[b]):] if single else (b, text[len(shown[b]):])
        self.last_generations = self._finish(tokens, state)
