"""Vision backends: pixel values (B, 3, S, S) and the prompts (read by hiprune++ only) ->
(visual_features (B, K, h), kept_indices (B, K)).

All three compute the same thing: the ONNX graph / TensorRT engine from the build, or the HF
vision tower run eagerly with attention maps and the project's reference selector (the torch
backend is the ground truth the others are compared against).
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

from exporter.errors import UserError

from .engine_dir import EngineDir
from .optional import need


@lru_cache(maxsize=2)
def checkpoint_model(name: str, path: str | None):
    """The full HF LLaVA model behind an engine directory (torch backends share one copy)."""
    from models import load_model

    source = path if path and os.path.isdir(path) else name
    try:
        loaded = load_model(source)
    except Exception as exc:
        raise UserError(f"--backend torch needs the checkpoint {name!r}: {str(exc).splitlines()[0]}") from None
    if loaded.model is None:
        raise UserError("--backend torch needs a checkpoint with weights, not a random-weight engine")
    return loaded.model.float().eval()


def _text_embedder(engine: EngineDir, tokenizer):
    from .text_embeds import TextEmbedder

    return TextEmbedder(engine, tokenizer)


class OrtVision:
    name = "onnxruntime"

    def __init__(self, engine: EngineDir, threads: int = 0, tokenizer=None):
        ort = need("onnxruntime", "onnxruntime")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        path = engine.file(engine.vision.get("onnx"), "vision ONNX file")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if names not in (["pixel_values"], ["pixel_values", "text_embeds"]):
            raise UserError(f"the vision graph takes {names}: not an edgeprune vision graph")
        self.text = _text_embedder(engine, tokenizer) if "text_embeds" in names else None
        self.dtype = "float16" if "float16" in self.session.get_inputs()[0].type else "float32"

    def __call__(self, pixel_values: np.ndarray, prompts) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"pixel_values": pixel_values.astype(self.dtype)}
        if self.text is not None:
            feeds["text_embeds"] = self.text(prompts)
        feats, kept = self.session.run(["visual_features", "kept_indices"], feeds)
        return feats, kept.astype(np.int64)


class TorchVision:
    name = "torch"

    def __init__(self, engine: EngineDir, tokenizer=None):
        import torch

        from exporter.pruning import layer_scores, select_tokens
        from models import vision_parts

        model_info = engine.config.get("model", {})
        self.model = checkpoint_model(model_info.get("name"), model_info.get("path"))
        self.parts = vision_parts(self.model)
        self.parts.vision_tower.config._attn_implementation = "eager"
        self.pruning = engine.vision["pruning"]
        self.torch, self.layer_scores, self.select = torch, layer_scores, select_tokens
        self.text = _text_embedder(engine, tokenizer) if self.pruning["method"] == "hiprune++" else None
        self.dtype = "float32"

    def __call__(self, pixel_values: np.ndarray, prompts) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        p = self.pruning
        with torch.no_grad():
            out = self.parts.vision_tower(torch.from_numpy(pixel_values).float(), output_hidden_states=True,
                                          output_attentions=p["method"] != "none")
            feats = out.hidden_states[self.model.config.vision_feature_layer][:, 1:]
            if p["method"] == "none":
                kept = torch.arange(feats.shape[1]).expand(feats.shape[0], -1)
            else:
                scores = self.layer_scores(out.attentions)
                extra = {}
                if self.text is not None:
                    extra["text_similarity"] = self.text.similarity(self.parts.vision_tower, feats, self.text(prompts))
                kept = self.select(p["method"], scores, p["keep"], grid=tuple(p["grid"]), **p.get("params", {}),
                                   **extra)
            rows = torch.gather(feats, 1, kept[..., None].expand(-1, -1, feats.shape[-1]))
            return self.parts.projector(rows).numpy(), kept.numpy().astype(np.int64)


class TrtVision:
    name = "tensorrt"

    def __init__(self, engine: EngineDir, tokenizer=None):
        from .trt_runner import TrtEngine

        self.engine = TrtEngine(engine, engine.vision.get("engine"), "vision engine")
        self.dtype = self.engine.input_dtype("pixel_values")
        method = engine.vision.get("pruning", {}).get("method")
        self.text = _text_embedder(engine, tokenizer) if method == "hiprune++" else None

    def __call__(self, pixel_values: np.ndarray, prompts) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"pixel_values": pixel_values}
        if self.text is not None:
            feeds["text_embeds"] = self.text(prompts)
        out = self.engine.run(feeds, ["visual_features", "kept_indices"])
        return out["visual_features"], out["kept_indices"].astype(np.int64)


def make_vision(engine: EngineDir, backend: str, threads: int = 0, tokenizer=None) -> Any:
    """`tokenizer` tokenizes prompts for a CLIP text tower that ships without one (tiny model)."""
    if backend == "onnxruntime":
        return OrtVision(engine, threads, tokenizer)
    if backend == "torch":
        return TorchVision(engine, tokenizer)
    if backend == "tensorrt":
        return TrtVision(engine, tokenizer)
    raise UserError(f"unknown vision backend {backend!r}")
