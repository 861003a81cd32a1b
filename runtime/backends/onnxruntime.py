"""The ONNX Runtime backend: the engine directory's ONNX graphs on the CPU execution provider.
It runs anywhere, so `auto` falls back to it whenever the TensorRT engines cannot run here."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..contract import EngineDir, Tensors
from ..errors import EngineDirError, one_line
from ..optional import need
from .base import StepDecoder, TextBackend, VisionBackend, VisionOutput
from .io_check import check_io

NAME = "onnxruntime"
_NP = {"float16": np.float16, "float32": np.float32}
# ONNX Runtime fuses DequantizeLinear + MatMul of int4/int8 weights into MatMulNBits, which by
# default quantizes the activations to int8 (accuracy level 4): max abs error 0.45 on a 256-long
# dot product of unit Gaussians, against 1e-5 at level 0 (float activations, the graph's meaning).
# int4 runs at level 0 (MLAS has a fast float-activation 4-bit kernel: 0.46 ms for a 1536 x 4608
# GEMV vs 1.0 ms in fp32). Its 8-bit kernel with float activations is a slow fallback (11 ms for
# the same GEMV, 10x fp32), so int8 weights run at level 4 (0.22 ms); int8 decoders are meant for
# TensorRT (per-channel DequantizeLinear -> int8-weight GEMM), where nothing of this applies.
ACCURATE_MATMULNBITS = "0"
FAST_MATMULNBITS = "4"


def matmulnbits_level(section) -> str:
    scheme = (section.quantization or {}).get("scheme", "none")
    return FAST_MATMULNBITS if scheme == "int8" else ACCURATE_MATMULNBITS


# Each session has its own intra-op thread pool, whose workers spin for a while after every
# parallel section before they sleep. A request runs the text tower (HiPrune++), then the vision
# graph once, and the decoder's prefill right after on the same cores: vision workers still
# spinning after the run would take CPU from the prefill (TTFT 594 -> 546 ms when they stopped;
# scaled LLaVA-1.5, K = 128, 2 threads). Not spinning at all costs the vision graph itself ~5 %
# (each of its ~300 nodes wakes a sleeping worker: 113 -> 106 ms median over 40 alternating runs),
# so the one-shot graphs spin *during* their run and ONNX Runtime stops the spinning the moment
# the run returns (`session.force_spinning_stop`, restarted by the next run). The decoder keeps
# the default: its steps follow each other (3-8 % faster decode spinning).
ONE_SHOT = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool"}


def session_io(sess) -> dict[str, tuple[list, str]]:
    """Every input and output of a session: name -> (shape, dtype name)."""
    return {t.name: (list(t.shape), _ORT_TYPES.get(t.type, t.type)) for t in [*sess.get_inputs(), *sess.get_outputs()]}


def session(path, threads: int = 0, config: dict[str, str] | None = None) -> Any:
    """An InferenceSession on the CPU provider; `threads` = intra-op threads (0: all cores);
    `config`: session configuration entries."""
    ort = need("onnxruntime", f"--backend {NAME}")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable models
        raise EngineDirError(f"ONNX Runtime cannot load {path.name}: {one_line(exc)}") from None


class OrtVision(VisionBackend):
    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0):
        self.session = session(engine.file(engine.vision.onnx, "vision ONNX file"), threads, ONE_SHOT)
        check_io("vision graph", [*engine.vision.inputs, *engine.vision.outputs], session_io(self.session))
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
        self.session = session(engine.file(engine.text.onnx, "text ONNX file"), threads, ONE_SHOT)
        check_io("text graph", [*engine.text.inputs, *engine.text.outputs], session_io(self.session))

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        return self.session.run([Tensors.TEXT_EMBEDS], {Tensors.TEXT_INPUT_IDS: input_ids})[0]


class OrtDecoder(StepDecoder):
    """Our decoder graph. With the concat cache the KV tensors are fed back as numpy arrays
    between steps; with the in-place cache (runtime/kv_cache.py) each past/present pair is one
    OrtValue bound as both input and output, so a step writes its positions and copies nothing."""

    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0, matmulnbits_accuracy_level: str | None = None):
        sec = engine.decoder
        level = matmulnbits_accuracy_level or matmulnbits_level(sec)
        config = {"session.qdq_matmulnbits_accuracy_level": level}
        self.session = session(engine.file(sec.onnx, "decoder ONNX file"), threads, config)
        check_io("decoder graph", [*sec.inputs, *sec.outputs], session_io(self.session))
        self.sec, self.dtype = sec, _NP[sec.dtype]
        self.kv = Tensors.kv_pairs(sec.num_layers)
        self.outputs = [Tensors.LOGITS] + [present for _, present in self.kv]
        self.past: dict[str, np.ndarray] = {}
        self.cache = None  # InplaceKvCache of an in-place decoder
        self._arrays: dict[int, np.ndarray] = {}  # the numpy memory under each in-place cache OrtValue

    def start(self, batch: int) -> None:
        if self.sec.kv_cache == "inplace":
            from ..kv_cache import InplaceKvCache

            if self.cache is not None and self.cache.restart_for(batch):
                return
            self.cache = None  # the old OrtValues go before the memory under them
            self._arrays.clear()
            self.cache = InplaceKvCache(self.sec, batch, lambda shape, dtype: self._ortvalue(np.zeros(shape, _NP[dtype])))
            return
        self._arrays.clear()
        shape = (batch, self.sec.num_kv_heads, 0, self.sec.head_dim)
        self.past = {past: np.zeros(shape, self.dtype) for past, _ in self.kv}

    def _ortvalue(self, array: np.ndarray) -> Any:
        """An OrtValue over `array`'s memory; it borrows that memory, so the array stays attached."""
        ort = need("onnxruntime", f"--backend {NAME}")
        value = ort.OrtValue.ortvalue_from_numpy(array)
        self._arrays[id(value)] = array
        return value

    def keep_rows(self, rows: np.ndarray) -> bool:
        rows = np.asarray(rows, np.int64)
        if self.cache is None:
            self.past = {name: np.ascontiguousarray(value[rows]) for name, value in self.past.items()}
            return True

        def take(value, keep):
            array = self._arrays.pop(id(value))
            return self._ortvalue(np.ascontiguousarray(array[keep]))

        self.cache.keep_rows(rows, take)
        return True

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = dict(feeds)
        feeds[Tensors.PROMPT_TABLE] = feeds[Tensors.PROMPT_TABLE].astype(self.dtype, copy=False)
        if self.cache is not None:
            return self._step_inplace(feeds)
        outs = self.session.run(self.outputs, {**feeds, **self.past})
        self.past = {past: out for (past, _), out in zip(self.kv, outs[1:])}
        return outs[0]

    def _step_inplace(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.cache.check(feeds)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output(Tensors.LOGITS)  # the first bound output: get_outputs()[0]
        for past, present, buffer in self.cache.pairs():
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        self.session.run_with_iobinding(binding)
        self.cache.steps += 1
        # only the logits: copy_outputs_to_cpu() would also copy every KV-cache buffer back
        return np.array(binding.get_outputs()[0].numpy())  # our own copy: the next run reuses ORT's buffer


def preflight(engine: EngineDir) -> None:
    """Nothing to check before loading: the graphs run on any CPU."""
    need("onnxruntime", f"--backend {NAME}")


def files(engine: EngineDir) -> dict[str, list[str]]:
    """The engine directory's files this backend reads, per part (what gets verified)."""
    dec, text = engine.config.decoder, engine.text
    return {"vision": list(engine.vision.onnx_files or [engine.vision.onnx]),
            "text": [text.onnx] if text else [],
            "decoder": [dec.onnx, dec.onnx_data] if dec else []}


def vision(engine: EngineDir, threads: int = 0) -> OrtVision:
    return OrtVision(engine, threads)


def decoder(engine: EngineDir, threads: int = 0) -> OrtDecoder:
    return OrtDecoder(engine, threads)


def text(engine: EngineDir, threads: int = 0) -> OrtText:
    return OrtText(engine, threads)
