"""Stand-in for TensorRT's Python API on a machine without a GPU (put tests/fakes/gpu first on
sys.path). A fake engine file names an ONNX graph of the engine directory; the execution
context runs it with ONNX Runtime on the tensors bound by address, so edgeprune's TensorRT
backend (shapes, addresses, profiles, device buffers, the KV cache kept on the "device") runs
for real and must give the ONNX Runtime backend's results."""
from __future__ import annotations

import ctypes
import enum
import json
from pathlib import Path

import numpy as np

__version__ = "10.3.0"


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = np.float32
    HALF = np.float16
    INT64 = np.int64
    INT32 = np.int32
    BOOL = np.bool_


_ORT_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64,
              "tensor(int32)": DataType.INT32, "tensor(bool)": DataType.BOOL}
PROFILES_SET: list[int] = []


class Logger:
    WARNING = 2

    def __init__(self, severity=None):
        self.severity = severity


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, blob: bytes):
        try:
            spec = json.loads(bytes(blob).decode())
        except ValueError:
            return None
        for plugin in spec.get("plugins", []):  # what TensorRT does for each plugin layer of a plan
            from plugins.host import HostShim

            HostShim(plugin["library"]).create_runtime(plugin["layer"], plugin["fields"])
        return ICudaEngine(Path(spec["onnx"]), int(spec.get("profiles", 1)))


class ICudaEngine:
    def __init__(self, onnx_path: Path, profiles: int):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.inputs = {i.name: _ORT_TYPES[i.type] for i in self.session.get_inputs()}
        self.outputs = {o.name: _ORT_TYPES[o.type] for o in self.session.get_outputs()}
        self.shapes = {t.name: tuple(d if isinstance(d, int) else -1 for d in t.shape)
                       for t in [*self.session.get_inputs(), *self.session.get_outputs()]}
        self.names = [*self.inputs, *self.outputs]
        self.num_io_tensors = len(self.names)
        self.num_optimization_profiles = profiles

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple:
        return self.shapes[name]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.inputs.get(name) or self.outputs[name]

    def create_execution_context(self):
        return IExecutionContext(self)


def _view(ptr: int, shape, dtype) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.zeros(shape, dtype)
    raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.results: dict[str, np.ndarray] | None = None

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(int(s) for s in shape)
        self.results = None
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        self.results = None if name in self.engine.inputs else self.results
        return True

    def set_optimization_profile_async(self, index, stream):
        PROFILES_SET.append(int(index))
        return True

    def _run(self) -> dict[str, np.ndarray]:
        if self.results is None:
            feeds = {n: _view(self.addresses[n], self.shapes[n], t.value).copy() for n, t in self.engine.inputs.items()}
            outs = self.engine.session.run(list(self.engine.outputs), feeds)
            self.results = dict(zip(self.engine.outputs, outs))
        return self.results

    def get_tensor_shape(self, name):
        return self._run()[name].shape

    def execute_async_v3(self, stream_handle):
        for name, value in self._run().items():
            _view(self.addresses[name], value.shape, value.dtype)[...] = value
        self.results = None
        return True


def write_fake_engine(path: Path, onnx_path: Path, profiles: int = 1, plugins: list | None = None) -> None:
    """What a test writes where edgeprune expects a serialized engine. `plugins`: [{"library":
    the host shim, "layer", "fields"}], created through the shim's runtime-phase creator when the
    engine is deserialised, as TensorRT creates the EdgePruneSelect layers of a plan."""
    spec = {"onnx": str(onnx_path), "profiles": profiles, **({"plugins": plugins} if plugins else {})}
    Path(path).write_text(json.dumps(spec))
