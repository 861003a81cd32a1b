"""One small layer over the two TensorRT flavours the project supports.

`tensorrt` (>= 10.3: JetPack 6.1/6.2 on Orin, desktop 10.x/11.x) comes first; TensorRT for RTX
(`tensorrt_rtx_bindings`) is the second backend and the one that builds engines ahead of time
on a machine without a GPU. Both networks are created strongly typed, so an fp16 engine comes
from an fp16 ONNX graph (with its float32 islands) on either library, with the same calls.
"""
from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from runtime.contract import TRT_DTYPES
from runtime.errors import MissingDependency, UserError
from runtime.optional import TENSORRT_FLAVOURS, hint, load_tensorrt

BACKENDS = TENSORRT_FLAVOURS


@dataclass
class TrtBackend:
    name: str  # "tensorrt" | "tensorrt-rtx"
    version: str
    trt: ModuleType
    logger: Any = field(default=None, repr=False)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def load_backend(name: str = "auto", verbose: bool = False) -> TrtBackend:
    """`auto` prefers standard TensorRT and falls back to TensorRT-RTX."""
    if name not in ("auto", *BACKENDS):
        raise UserError(f"unknown TensorRT backend {name!r}: use auto, {', '.join(BACKENDS)}")
    candidates = BACKENDS if name == "auto" else (name,)
    reasons = []
    for candidate in candidates:
        try:
            lib = load_tensorrt(candidate, f"--backend {candidate}")
        except MissingDependency as exc:
            if name != "auto":
                raise
            reasons.append(f"{candidate}: {exc.module} is not importable")
            continue
        return TrtBackend(lib.flavour, lib.version, lib.module, make_logger(lib.module, verbose))
    raise UserError("no TensorRT library is installed (" + "; ".join(reasons) + "); "
                    + hint("tensorrt") + ", or " + hint("tensorrt_rtx_bindings"))


def available_backend(verbose: bool = False) -> TrtBackend | None:
    try:
        return load_backend("auto", verbose)
    except UserError:
        return None


class _Progress:
    """Adapts TensorRT's IProgressMonitor to a tqdm bar over the top-level build phases, and
    turns Ctrl-C into a cancelled build: while TensorRT builds, Python runs only inside these
    callbacks, where a KeyboardInterrupt would surface as a failed build. SIGINT therefore just
    sets `interrupted`, the next callback cancels the build, and `build_engine` then raises
    KeyboardInterrupt ("interrupted", not "failed")."""

    def __init__(self, trt: ModuleType, label: str):
        from tqdm import tqdm

        self.interrupted = False
        progress = self

        class Monitor(trt.IProgressMonitor):
            def __init__(inner):
                trt.IProgressMonitor.__init__(inner)
                inner.bar = None

            def phase_start(inner, phase_name, parent_phase, num_steps):
                progress.on_phase(phase_name)
                if parent_phase is None and inner.bar is None:
                    inner.bar = tqdm(total=num_steps, desc=f"{label}: {phase_name}", unit="phase", leave=False)
                elif inner.bar is not None and parent_phase is not None:
                    inner.bar.set_postfix_str(phase_name[:40])

            def step_complete(inner, phase_name, step):
                if inner.bar is not None and phase_name == inner.bar.desc.split(": ", 1)[-1]:
                    inner.bar.update(1)
                return not progress.interrupted  # False cancels the build

            def phase_finish(inner, phase_name):
                if inner.bar is not None and phase_name == inner.bar.desc.split(": ", 1)[-1]:
                    inner.bar.close()
                    inner.bar = None

        self.monitor = Monitor()

    def on_phase(self, name: str) -> None:
        """Called at every phase start (a seam for tests)."""

    def interrupt(self, signum=None, frame=None) -> None:
        self.interrupted = True


# TensorRT warnings that are expected for every edgeprune graph and say nothing to the user:
# int64 kept indices, and the plugin node's extra attributes (its fields are validated by the
# plugin itself). Shown with -v.
BENIGN_WARNINGS = ("Int64 binding", "plugin_version", "plugin_namespace", "Attribute", "is not used by the plugin")


def make_logger(trt: ModuleType, verbose: bool = False):
    """A TensorRT logger that prints warnings and errors to stderr, except the benign ones above
    (everything, INFO included, with `verbose`)."""

    class Logger(trt.ILogger):
        def __init__(inner):
            trt.ILogger.__init__(inner)

        def log(inner, severity, msg):
            level = int(severity) if not hasattr(severity, "value") else int(severity.value)
            if verbose or (level <= 2 and not (level == 2 and any(b in msg for b in BENIGN_WARNINGS))):
                print(f"[TensorRT] {msg}", file=sys.stderr, flush=True)

    return Logger()


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).split(".")[-1].upper()
    return TRT_DTYPES.get(name, name.lower())


def _parse(backend: TrtBackend, onnx_path: Path):
    trt = backend.trt
    builder = trt.Builder(backend.logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, backend.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise UserError(f"{backend.name} could not parse {onnx_path.name}: {errors}")
    return builder, network, parser


def network_io(network) -> list[dict[str, Any]]:
    """Names, shapes (-1 = dynamic) and dtypes of the parsed network's inputs and outputs."""
    out = []
    for kind, count, get in (
        ("input", network.num_inputs, network.get_input),
        ("output", network.num_outputs, network.get_output),
    ):
        for i in range(count):
            t = get(i)
            out.append({"name": t.name, "mode": kind, "shape": list(t.shape), "dtype": _dtype_name(t.dtype)})
    return out


def build_engine(
    backend: TrtBackend,
    onnx_path: Path,
    engine_path: Path,
    *,
    profiles: Sequence[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]],
    timing_cache: Path | None = None,
    plugin_libraries: Sequence[Path] = (),
    label: str = "engine",
    workspace_bytes: int | None = None,
) -> dict[str, Any]:
    """Parse, build and serialise one engine; returns its I/O and build facts for config.json."""
    trt = backend.trt
    registry = trt.get_plugin_registry()
    for lib in plugin_libraries:
        registry.load_library(str(lib))
    builder, network, _parser = _parse(backend, Path(onnx_path))
    config = builder.create_builder_config()
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if plugin_libraries and hasattr(config, "plugins_to_serialize"):
        config.plugins_to_serialize = [str(p) for p in plugin_libraries]

    cache = None
    # TensorRT-RTX compiles kernels at run time on the target GPU and ignores timing caches.
    if timing_cache is not None and backend.name == "tensorrt" and hasattr(config, "create_timing_cache"):
        blob = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)
    progress = _Progress(trt, label)
    config.progress_monitor = progress.monitor

    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGINT, progress.interrupt) if main_thread else None
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if progress.interrupted:
        raise KeyboardInterrupt(f"building {engine_path.name}")
    if serialized is None:
        raise UserError(f"{backend.name} failed to build {engine_path.name} (see the TensorRT log above)")
    Path(engine_path).write_bytes(memoryview(serialized))
    if cache is not None:
        timing_cache.write_bytes(memoryview(cache.serialize()))
    return {
        "file": Path(engine_path).name,
        "backend": backend.name,
        "version": backend.version,
        "io": network_io(network),
        "profiles": [
            {name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles
        ],
        "plugins": [Path(p).name for p in plugin_libraries],
    }
