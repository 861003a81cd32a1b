"""Vision backends: pixel values (B, 3, S, S) -> (visual_features (B, K, h), kept_indices (B, K)).

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
        if names != ["pixel_values"]:
            raise UserError(f"the vision graph takes {names}; this runtime feeds pixel_values only "
                            "(prompt-aware pruning needs a text encoder the engine dir does not carry)")
        self.dtype = "float16" if "float16" in self.session.get_inputs()[0].type else "float32"

    def __call__(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats, kept = self.session.run(["visual_features", "kept_indices"],
                                       {"pixel_values": pixel_values.astype(self.dtype)})
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
        self.dtype = "float32"

    def __call__(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
                kept = self.select(p["method"], scores, p["keep"], grid=tuple(p["grid"]), **p.get("params", {}))
            rows = torch.gather(feats, 1, kept[..., None].expand(-1, -1, feats.shape[-1]))
            return self.parts.projector(rows).numpy(), kept.numpy().astype(np.int64)


class TrtVision:
    name = "tensorrt"

    def __init__(self, engine: EngineDir):
        from .trt_runner import TrtEngine

        self.engine = TrtEngine(engine, engine.vision.get("engine"), "vision engine")
        self.dtype = self.engine.input_dtype("pixel_values")

    def __call__(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.engine.run({"pixel_values": pixel_values}, ["visual_features", "kept_indices"])
        return out["visual_features"], out["kept_indices"].astype(np.int64)


def make_vision(engine: EngineDir, backend: str, threads: int = 0) -> Any:
    if backend == "onnxruntime":
        return OrtVision(engine, threads)
    if backend == "torch":
        return TorchVision(engine)
    if backend == "tensorrt":
        return TrtVision(engine)
    raise UserError(f"unknown vision backend {backend!r}")
