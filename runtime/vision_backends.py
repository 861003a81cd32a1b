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


def _text_embedder(engine: EngineDir, backend: str, threads: int = 0):
    """The prompt embedder on the vision backend's own library (text.onnx, text.engine, or
    the HF text tower for the torch reference)."""
    from .text_embeds import TextEmbedder

    return TextEmbedder(engine, backend, threads)


def _prompt_embeds(text, prompts) -> np.ndarray:
    """(len(prompts), D) with each distinct prompt embedded once: a LLaVA-NeXT image repeats its
    prompt for every one of its views."""
    unique = list(dict.fromkeys(prompts))
    rows = np.asarray(text(unique))
    return rows[[unique.index(p) for p in prompts]]


def _view_budget(view_budget, views: int) -> np.ndarray:
    """The anyres graph's (V,) int64 `view_budget` input (each view's K_view)."""
    if view_budget is None or len(view_budget) != views:
        raise UserError("this LLaVA-NeXT vision engine needs each view's K_view (view_budget); "
                        "run it through runtime.Pipeline")
    return np.ascontiguousarray(view_budget, dtype=np.int64)


class OrtVision:
    name = "onnxruntime"

    def __init__(self, engine: EngineDir, threads: int = 0):
        ort = need("onnxruntime", "onnxruntime")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        path = engine.file(engine.vision.get("onnx"), "vision ONNX file")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        self.takes_budget = "view_budget" in names  # anyres pruned graphs: one K_view per view
        if [n for n in names if n != "view_budget"] not in (["pixel_values"], ["pixel_values", "text_embeds"]):
            raise UserError(f"the vision graph takes {names}: not an edgeprune vision graph")
        self.text = _text_embedder(engine, self.name, threads) if "text_embeds" in names else None
        self.dtype = "float16" if "float16" in self.session.get_inputs()[0].type else "float32"

    def __call__(self, pixel_values: np.ndarray, prompts, view_budget=None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"pixel_values": pixel_values.astype(self.dtype)}
        if self.takes_budget:
            feeds["view_budget"] = _view_budget(view_budget, len(pixel_values))
        if self.text is not None:
            feeds["text_embeds"] = _prompt_embeds(self.text, prompts)
        feats, kept = self.session.run(["visual_features", "kept_indices"], feeds)
        return feats, kept.astype(np.int64)


class TorchVision:
    name = "torch"

    def __init__(self, engine: EngineDir):
        import torch

        from exporter.pruning import layer_scores, select_tokens
        from models import vision_parts

        model_info = engine.config.get("model", {})
        self.model = checkpoint_model(model_info.get("name"), model_info.get("path"))
        self.parts = vision_parts(self.model)
        self.parts.vision_tower.config._attn_implementation = "eager"
        self.pruning = engine.vision["pruning"]
        self.torch, self.layer_scores, self.select = torch, layer_scores, select_tokens
        self.text = _text_embedder(engine, self.name) if self.pruning["method"] == "hiprune++" else None
        self.dtype = "float32"
        self.anyres = engine.vision.get("anyres")  # LLaVA-NeXT: runtime/anyres_torch.py

    def stock_features(self, pixel_values: np.ndarray, image_sizes) -> list[np.ndarray]:
        """LLaVA-NeXT without pruning: the HF model's own get_image_features (the baseline)."""
        from .anyres_torch import stock_features

        return stock_features(self.model, pixel_values, image_sizes)

    def __call__(self, pixel_values: np.ndarray, prompts, view_budget=None) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        p = self.pruning
        if self.anyres and p["method"] != "none":
            from .anyres_torch import pruned_views

            return pruned_views(self, pixel_values, prompts, _view_budget(view_budget, len(pixel_values)))
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

    def __init__(self, engine: EngineDir):
        from .trt_runner import TrtEngine

        self.engine = TrtEngine(engine, engine.vision.get("engine"), "vision engine")
        self.dtype = self.engine.input_dtype("pixel_values")
        method = engine.vision.get("pruning", {}).get("method")
        self.text = _text_embedder(engine, self.name) if method == "hiprune++" else None
        trt_engine = self.engine.engine
        names = {trt_engine.get_tensor_name(i) for i in range(trt_engine.num_io_tensors)}
        self.takes_budget = "view_budget" in names  # anyres pruned engines
        if "text_embeds" not in names:  # anyres engines whose budgets add no prompt-aware token
            self.text = None

    def __call__(self, pixel_values: np.ndarray, prompts, view_budget=None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"pixel_values": pixel_values}
        if self.takes_budget:
            feeds["view_budget"] = _view_budget(view_budget, len(pixel_values))
        if self.text is not None:
            feeds["text_embeds"] = _prompt_embeds(self.text, prompts)
        out = self.engine.run(feeds, ["visual_features", "kept_indices"])
        return out["visual_features"], out["kept_indices"].astype(np.int64)


def make_vision(engine: EngineDir, backend: str, threads: int = 0) -> Any:
    if backend == "onnxruntime":
        return OrtVision(engine, threads)
    if backend == "torch":
        return TorchVision(engine)
    if backend == "tensorrt":
        return TrtVision(engine)
    raise UserError(f"unknown vision backend {backend!r}")
