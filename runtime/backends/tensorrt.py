"""The TensorRT backend: the serialized engines of an engine directory, with device memory
managed through cuda-python (runtime/backends/cuda.py), not torch.

Before deserialising, the recorded library and version must match the installed one and the GPU
must be one the engines were built for; TensorRT would otherwise abort or print a long log and
return None. The decoder's KV cache stays on the device between steps."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..contract import TRT_DTYPES, EngineDir, Tensors
from ..errors import EngineDirError, UserError
from ..optional import load_tensorrt
from . import cuda, plugin_readback
from .base import StepDecoder, TextBackend, VisionBackend, VisionOutput
from .io_check import check_io

NAME = "tensorrt"


def _library(engine: EngineDir):
    record = engine.config.engine
    flavour = record.backend or "tensorrt"
    trt = load_tensorrt(flavour, f"--backend {NAME}")
    if record.version and trt.version.split(".")[:3] != str(record.version).split(".")[:3]:
        raise EngineDirError(f"the engines were built with {flavour} {record.version} but {trt.version} is installed: "
                             "rebuild the engine directory on this machine")
    problem = cuda.gpu_problem(record)
    if problem:
        raise UserError(f"--backend {NAME} cannot run here: {problem}")
    return trt.module


class TrtEngine:
    """One deserialised engine with its execution context and stream."""

    def __init__(self, engine_dir: EngineDir, name: str | None, what: str):
        path = engine_dir.file(name, what)
        trt = _library(engine_dir)
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        blob = path.read_bytes()
        validity = getattr(self.runtime, "get_engine_validity", None)  # TensorRT >= 10.8: header check only
        if validity is not None:
            try:
                verdict = validity(blob)
                verdict = verdict[0] if isinstance(verdict, tuple) else verdict
            except Exception:  # the binding's shape differs between releases: fall back to deserialising
                verdict = None
            if verdict is not None and str(verdict).split(".")[-1] != "VALID":
                raise EngineDirError(f"{path.name} cannot run here ({str(verdict).split('.')[-1].lower()}): it was "
                                     "built by another TensorRT version or for another GPU; rebuild it")
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise EngineDirError(f"{path.name} cannot run here (built by another TensorRT version or for another GPU)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.profile = 0
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def io(self) -> dict[str, tuple[list, str]]:
        """name -> (shape with -1 for dynamic axes, dtype name) of every I/O tensor."""
        return {n: (list(self.engine.get_tensor_shape(n)), self.dtype(n)) for n in self.names}

    def dtype(self, name: str) -> str:
        return TRT_DTYPES[str(self.engine.get_tensor_dtype(name)).split(".")[-1].upper()]

    def set_profile(self, index: int) -> None:
        if index != self.profile and self.engine.num_optimization_profiles > index:
            self.context.set_optimization_profile_async(index, int(self.stream))
            self.profile = index

    def run(self, feeds: dict[str, Any], keep_on_device: tuple[str, ...] = (),
            aliases: dict[str, "cuda.DeviceArray"] | None = None) -> dict[str, Any]:
        """Feeds are numpy arrays or DeviceArrays. Outputs come back as numpy arrays, except the
        names in `keep_on_device`, which stay DeviceArrays (the KV cache). `aliases`: outputs
        written into the given device buffer instead of a new one (an in-place KV cache binds each
        present.* output to its past_key_values.* input buffer)."""
        aliases = aliases or {}
        bound: dict[str, cuda.DeviceArray] = {}
        for name, value in feeds.items():
            if not isinstance(value, cuda.DeviceArray):
                value = cuda.DeviceArray.from_host(np.asarray(value, dtype=self.dtype(name)), self.stream)
            bound[name] = value
            self.context.set_input_shape(name, value.shape)
            self.context.set_tensor_address(name, value.ptr)
        results: dict[str, cuda.DeviceArray] = {}
        for name in self.outputs:
            if name in aliases:
                out = aliases[name]
                self.context.set_tensor_address(name, out.ptr)
                continue
            out = cuda.DeviceArray(tuple(self.context.get_tensor_shape(name)), self.dtype(name))
            self.context.set_tensor_address(name, out.ptr)
            results[name] = out
        if not self.context.execute_async_v3(int(self.stream)):
            raise UserError("TensorRT execution failed (see the log above)")
        self.stream.synchronize()
        return {n: (a if n in keep_on_device else a.to_host(self.stream)) for n, a in results.items()}


class TrtVision(VisionBackend):
    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0):
        plugin = engine.vision.plugin
        if plugin is None:
            self.engine = TrtEngine(engine, engine.vision.engine, "vision engine")
        else:  # the plan's EdgePruneSelect fields, read back, must be config.json's
            self.engine, recorded = plugin_readback.deserialise_and_read(
                lambda: TrtEngine(engine, engine.vision.engine, "vision engine"))
            plugin_readback.check(plugin_readback.expected_fields(plugin), recorded, engine.vision.engine)
        check_io("vision engine", [*engine.vision.inputs, *engine.vision.outputs], self.engine.io())
        self.takes_budget = Tensors.VIEW_BUDGET in self.engine.names
        self.takes_text = Tensors.TEXT_EMBEDS in self.engine.names

    @property
    def input_dtype(self) -> str:
        return self.engine.dtype(Tensors.PIXEL_VALUES)

    def __call__(self, pixel_values, *, text_embeds=None, view_budget=None) -> VisionOutput:
        feeds = {Tensors.PIXEL_VALUES: pixel_values}
        if self.takes_budget:
            feeds[Tensors.VIEW_BUDGET] = view_budget
        if self.takes_text:
            feeds[Tensors.TEXT_EMBEDS] = text_embeds
        out = self.engine.run(feeds)
        return VisionOutput(out[Tensors.VISUAL_FEATURES], out[Tensors.KEPT_INDICES].astype(np.int64))


class TrtText(TextBackend):
    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0):
        self.engine = TrtEngine(engine, engine.text.engine, "text engine")
        check_io("text engine", [*engine.text.inputs, *engine.text.outputs], self.engine.io())

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        return self.engine.run({Tensors.TEXT_INPUT_IDS: input_ids})[Tensors.TEXT_EMBEDS]


class TrtDecoder(StepDecoder):
    """Profile 0 = prefill, profile 1 = decode. Concat cache: the present KV tensors of one step
    are bound as the next step's past inputs without leaving the device. In-place cache: one
    device buffer per pair is bound as both the past input and the present output (TensorRT's
    KV-cache update layer requires that)."""

    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0):
        self.sec = engine.decoder
        self.engine = TrtEngine(engine, self.sec.engine, "decoder engine")
        check_io("decoder engine", [*self.sec.inputs, *self.sec.outputs], self.engine.io())
        self.kv = Tensors.kv_pairs(self.sec.num_layers)
        self.past: dict[str, Any] = {}
        self.cache = None

    def start(self, batch: int) -> None:
        self.prefill = True
        if self.sec.kv_cache == "inplace":
            from ..kv_cache import InplaceKvCache

            if self.cache is not None and self.cache.restart_for(batch):
                return
            self.cache = None  # free the old device buffers before allocating new ones

            def allocate(shape, dtype):
                return cuda.DeviceArray.from_host(np.zeros(shape, dtype), self.engine.stream)

            self.cache = InplaceKvCache(self.sec, batch, allocate)
            return
        shape = (batch, self.sec.num_kv_heads, 0, self.sec.head_dim)
        self.past = {past: np.zeros(shape, self.sec.dtype) for past, _ in self.kv}

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.engine.set_profile(0 if self.prefill else 1)
        self.prefill = False
        if self.cache is not None:
            self.cache.check(feeds)
            pairs = list(self.cache.pairs())
            out = self.engine.run({**feeds, **{past: buf for past, _, buf in pairs}},
                                  aliases={present: buf for _, present, buf in pairs})
            self.cache.steps += 1
            return out[Tensors.LOGITS]
        out = self.engine.run({**feeds, **self.past}, keep_on_device=tuple(p for _, p in self.kv))
        self.past = {past: out[present] for past, present in self.kv}
        return out[Tensors.LOGITS]


def preflight(engine: EngineDir) -> None:
    """Library version and GPU checks, before any file is hashed or loaded."""
    _library(engine)


def files(engine: EngineDir) -> dict[str, list[str]]:
    """The engine directory's files this backend reads, per part (what gets verified)."""
    dec, text = engine.config.decoder, engine.text
    return {"vision": [engine.vision.engine] if engine.vision.engine else [],
            "text": [text.engine] if text and text.engine else [],
            "decoder": [dec.engine] if dec and dec.engine else []}


def vision(engine: EngineDir, threads: int = 0) -> TrtVision:
    return TrtVision(engine, threads)


def decoder(engine: EngineDir, threads: int = 0) -> TrtDecoder:
    return TrtDecoder(engine, threads)


def text(engine: EngineDir, threads: int = 0) -> TrtText:
    return TrtText(engine, threads)
