"""The prompt's CLIP text embedding, which HiPrune++ vision engines take as `text_embeds`.

The build exports the CLIP text tower into the engine directory (`text.onnx`, `text.engine`,
`text_tokenizer/`, config.json's `text` section), so every backend reads the prompt the same
way: `chunk_ids` cuts it into 77-token chunks, the tower embeds each chunk, and the prompt's
embedding is the chunks' mean, L2-normalised. The torch backend runs the HF text model from the
recorded source instead of the graph: it is the reference the graphs are compared against.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from exporter.errors import UserError

from .engine_dir import EngineDir

CONTEXT_LENGTH = 77
BACKENDS = ("onnxruntime", "tensorrt", "torch")


def chunk_ids(tokenizer, prompt: str, context: int = CONTEXT_LENGTH, *, bos: int, eos: int, pad: int) -> np.ndarray:
    """(C, context) int64: the prompt's tokens (no special tokens, no truncation) in pieces of
    context - 2, each as [bos] + piece + [eos] + padding. An empty prompt is one chunk, so
    every prompt has an embedding; the one rule all backends share."""
    tokens = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
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


def text_section(engine: EngineDir) -> dict:
    section = engine.config.get("text")
    if not section:
        raise UserError(f"{engine.path} is a hiprune++ engine directory without the exported CLIP text tower "
                        "(no `text` section in config.json): rebuild it with this release")
    return section


@lru_cache(maxsize=4)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise UserError(f"cannot read the text tokenizer in {folder}: {str(exc).splitlines()[0]}") from None


@lru_cache(maxsize=2)
def _torch_tower(source: str, seed: int, tokenizer_folder: str):
    from models.loading import CheckpointError
    from models.text_tower import RANDOM_SOURCE, random_text_tower, text_tower_from_path

    if source == RANDOM_SOURCE:
        return random_text_tower(_tokenizer(tokenizer_folder), seed)
    if not (Path(source) / "config.json").is_file():
        raise UserError(f"--backend torch needs the CLIP text tower the engine was built from ({source}), "
                        "which is not there any more")
    try:
        return text_tower_from_path(source)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


class TextEmbedder:
    """prompts -> (B, D) float32 unit vectors, one prompt at a time, so a batch equals its
    requests alone (no cross-prompt padding, no batch-size-dependent kernels)."""

    def __init__(self, engine: EngineDir, backend: str, threads: int = 0):
        if backend not in BACKENDS:
            raise UserError(f"unknown text backend {backend!r}: use {', '.join(BACKENDS)}")
        self.engine, self.backend = engine, backend
        self.section = section = text_section(engine)
        folder = engine.path / section["tokenizer"]
        if not folder.is_dir():
            raise UserError(f"{engine.path} is incomplete: the text tokenizer {section['tokenizer']}/ is missing")
        self.tokenizer = _tokenizer(str(folder))
        self.context = int(section["context_length"])
        self.max_chunks = int(section["max_chunks"])
        self.ids = {k: int(section[f"{k}_token_id"]) for k in ("bos", "eos", "pad")}
        self._run = {"onnxruntime": self._ort, "tensorrt": self._trt, "torch": self._torch}[backend](threads)

    # -- one runner per backend: (C, 77) int64 -> (C, D) float32 -------------------------
    def _ort(self, threads: int):
        from .optional import need

        ort = need("onnxruntime", "onnxruntime")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        path = self.engine.file(self.section.get("onnx"), "text ONNX file")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda ids: session.run(["text_embeds"], {"input_ids": ids})[0]

    def _trt(self, threads: int):
        from .trt_runner import TrtEngine

        engine = TrtEngine(self.engine, self.section.get("engine"), "text engine")
        return lambda ids: engine.run({"input_ids": ids}, ["text_embeds"])["text_embeds"]

    def _torch(self, threads: int):
        import torch

        self.tower = _torch_tower(self.section["source"], int(self.section.get("seed", 0)),
                                  str(self.engine.path / self.section["tokenizer"]))

        def run(ids):
            with torch.no_grad():
                return self.tower(input_ids=torch.from_numpy(ids)).text_embeds.float().numpy()

        return run

    # -- the embedding ---------------------------------------------------------------------
    def chunks(self, prompt: str) -> np.ndarray:
        ids = chunk_ids(self.tokenizer, prompt, self.context, **self.ids)
        if len(ids) > self.max_chunks:
            limit = self.max_chunks * (self.context - 2)
            raise UserError(f"the prompt is {len(ids)} CLIP chunks long; the text engine takes at most "
                            f"{self.max_chunks} ({limit} CLIP tokens): shorten the prompt")
        return ids

    def chunk_embeds(self, prompt: str) -> np.ndarray:
        """(C, D): the tower's projected, un-normalised embedding of each chunk."""
        return np.asarray(self._run(self.chunks(prompt)), dtype=np.float32)

    def __call__(self, prompts: Sequence[str] | str) -> np.ndarray:
        if isinstance(prompts, str):
            prompts = [prompts]
        return np.stack([mean_normalised(self.chunk_embeds(p)) for p in prompts])

    def similarity(self, vision_tower, patch_features, text: np.ndarray):
        """Cosine between each patch's CLIP image embedding and the prompt embedding (the same
        formula the exported graph uses), with the visual projection of the recorded CLIP."""
        import torch

        projection = _visual_projection(self.section["source"])
        clip = getattr(vision_tower, "vision_model", vision_tower)
        image = projection(clip.post_layernorm(patch_features)).float()
        image = image / image.norm(dim=-1, keepdim=True)
        t = torch.from_numpy(text).float()
        t = t / t.norm(dim=-1, keepdim=True)
        return torch.matmul(image, t.unsqueeze(-1)).squeeze(-1)


@lru_cache(maxsize=2)
def _visual_projection(source: str):
    from models.loading import CheckpointError
    from models.text_tower import RANDOM_SOURCE, visual_projection_from_path

    if source == RANDOM_SOURCE or not (Path(source) / "config.json").is_file():
        raise UserError(f"the torch reference needs the CLIP checkpoint the engine was built from ({source})")
    try:
        return visual_projection_from_path(source)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
