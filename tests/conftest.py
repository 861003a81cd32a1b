"""Shared fixtures: the built-in tiny model is loaded once per test session."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny():
    from models import load_model

    return load_model("tiny-llava")


@pytest.fixture(scope="session")
def tiny_reference(tiny):
    """Eager HF vision tower outputs for 3 fixed images: attention maps, features."""
    from exporter.pruning import layer_scores

    tower = tiny.vision.vision_tower
    tower.config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(7)
    pixels = torch.randn(3, 3, 336, 336, generator=gen)
    with torch.no_grad():
        out = tower(pixels, output_attentions=True, output_hidden_states=True)
    return {
        "pixels": pixels,
        "scores": layer_scores(out.attentions),
        "features": out.hidden_states[-2][:, 1:],
        "post_layernorm_input": out.hidden_states[-2][:, 1:],
    }


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A tiny hivtp engine directory (ONNX Runtime) shared by the runtime tests."""
    from fakes.engines import build_engine_dir

    return build_engine_dir(tmp_path_factory.getbasetemp() / "engines", "hivtp")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from fakes.engines import write_images

    return write_images(tmp_path_factory.getbasetemp() / "images")


def _built_or_skip(build, what: str, tools: tuple[str, ...]):
    """build() -> path, or a skip naming what is missing (a tool, or a prerequisite the plugins
    package reports as "not found")."""
    import shutil

    from plugins import PluginBuildError

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: cannot build {what}")
    try:
        return build()
    except PluginBuildError as exc:
        if "not found" in str(exc):
            pytest.skip(f"{what} prerequisites missing: {exc}")
        raise


@pytest.fixture(scope="session")
def host_shim_path():
    """libedgeprune_host.so: the plugin's field parsing, recorder and per-patch selection,
    compiled with g++ (no GPU, no TensorRT runtime)."""
    from plugins import build_host_shim

    return _built_or_skip(build_host_shim, "the host shim", ("cmake", "g++"))


@pytest.fixture(scope="session")
def plugin_library():
    """The EdgePruneSelect plugin library for the installed TensorRT headers (nvcc + CMake)."""
    from plugins import build

    return _built_or_skip(build, "the plugin", ("cmake",))


@pytest.fixture
def fake_gpu(monkeypatch):
    """The fake `tensorrt` and `cuda` packages of tests/fakes/gpu, first on sys.path for one test."""
    import sys
    from pathlib import Path

    fakes = Path(__file__).parent / "fakes" / "gpu"
    monkeypatch.syspath_prepend(str(fakes))
    for name in [m for m in sys.modules if m.split(".")[0] in ("tensorrt", "cuda")]:
        monkeypatch.delitem(sys.modules, name)
    from runtime.backends import cuda

    cuda.device_capability.cache_clear()
    import tensorrt
    from cuda.bindings import runtime as cudart

    cudart.CALLS.clear()
    tensorrt.PROFILES_SET.clear()
    yield tensorrt, cudart
    for name in [m for m in sys.modules if m.split(".")[0] in ("tensorrt", "cuda")]:
        del sys.modules[name]  # not monkeypatch.delitem: its undo would put the fakes back
    cuda.device_capability.cache_clear()
