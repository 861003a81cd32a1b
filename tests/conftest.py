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
