"""The ONNX Runtime backend: the engine directory's ONNX graphs on the CPU execution provider.
It runs anywhere, so `auto` falls back to it whenever the TensorRT engines cannot run here."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..contract import EngineDir, Tensors
from ..errors import EngineDirError, one_line
from ..optional import need
from .base import StepDecoder, TextBackend, VisionBackend, VisionOutput

NAME = "onnxruntime"
_NP = {"float16": np.float16, "float32": np.float32}


def session(path, threads: int = 0) -> Any:
    """An InferenceSession on the CPU provider; `threads` = intra-op threads (0: all cores)."""
    ort = need("onnxruntime", f"--backend {NAME}")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable models
        raise EngineDirError(f"ONNX Runtime cannot load {path.name}: {one_line(exc)}") from None


class OrtVision(VisionBackend):
    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0):
        self.session = session(engine.file(engine.vision.onnx, "vision ONNX file"), threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        optional = {Tensors.VIEW_BUDGET, Tensors.TEXT_EMBEDS}
        if Tensors.PIXEL_VALUES not in inputs or set(inputs) - optional - {Tensors.PIXEL_VALUES}:
            raise EngineDirError(f"the vision graph takes {sorted(inputs)}: not an edgeprune vision graph")
        self.takes_budget = Tensors.VIEW_BUDGET in inputs
        self.takes_text = Tensors.TEXT_EMBEDS in inputs
        self._dtype = "float16" if "float16" in inputs[Tensors.PIXEL_VALUES].type else "float32"

    @property
    def input_dtype(self) -> str:
        return self._dtype

    def __call__(self, pixel_values, *, text_embeds=None, view_budget=None) -> VisionOutput:
        feeds = {Tensors.PIXEL_VALUES: np.ascontiguousarray(pixel_values, dtype=self._dtype)}
        if self.takes_budget:
            feeds[Tensors.VIEW_BUDGET] = np.ascontiguousarray(view_budget, dtype=np.int64)
        if self.takes_text:
            feeds[Tensors.TEXT_EMBEDS] = np.ascontiguousarray(text_embeds, dtype=np.float32)
        feats, kept = self.session.run([Tensors.VISUAL_FEATURES, Tensors.KEPT_INDICES], feeds)
        return VisionOutput(feats, kept.astype(np.int64))


class OrtText(TextBackend):
    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0):
        self.session = session(engine.file(engine.text.onnx, "text ONNX file"), threads)

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        return self.session.run([Tensors.TEXT_EMBEDS], {Tensors.TEXT_INPUT_IDS: input_ids})[0]


class OrtDecoder(StepDecoder):
    """Our decoder graph; the KV cache is fed back as numpy arrays between steps."""

    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0):
        sec = engine.decoder
        self.session = session(engine.file(sec.onnx, "decoder ONNX file"), threads)
        self.sec, self.dtype = sec, _NP[sec.dtype]
        self.kv = Tensors.kv_pairs(sec.num_layers)
        self.outputs = [Tensors.LOGITS] + [present for _, present in self.kv]
        self.past: dict[str, np.ndarray] = {}

    def start(self, batch: int) -> None:
        shape = (batch, self.sec.num_kv_heads, 0, self.sec.head_dim)
        self.past = {past: np.zeros(shape, self.dtype) for past, _ in self.kv}

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = dict(feeds)
        feeds[Tensors.PROMPT_TABLE] = feeds[Tensors.PROMPT_TABLE].astype(self.dtype, copy=False)
        outs = self.session.run(self.outputs, {**feeds, **self.past})
        self.past = {past: out for (past, _), out in zip(self.kv, outs[1:])}
        return outs[0]


def vision(engine: EngineDir, threads: int = 0) -> OrtVision:
    return OrtVision(engine, threads)


def decoder(engine: EngineDir, threads: int = 0) -> OrtDecoder:
    return OrtDecoder(engine, threads)


def text(engine: EngineDir, threads: int = 0) -> OrtText:
    return OrtText(engine, threads)
