"""Uniform access to the pieces of a LLaVA model that the exporter needs.

transformers has moved these attributes between releases (`model.vision_tower` vs
`model.model.vision_tower`, `CLIPVisionModel.vision_model` vs a flat CLIP module); the rest of
the project asks here instead of guessing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def clip_core(vision_tower: torch.nn.Module) -> torch.nn.Module:
    """The module that owns `embeddings`, `pre_layrnorm`, `encoder` and `post_layernorm`."""
    return getattr(vision_tower, "vision_model", vision_tower)


@dataclass
class VisionParts:
    """The vision tower and projector of a LLaVA checkpoint plus the config facts around them."""

    vision_tower: torch.nn.Module
    projector: torch.nn.Module
    config: Any  # LlavaConfig

    @property
    def clip(self) -> torch.nn.Module:
        return clip_core(self.vision_tower)

    @property
    def feature_layer(self) -> int:
        """Number of encoder layers to run: vision_feature_layer -2 means layer L-1 of L."""
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError("multi-layer vision features are not supported")
        total = self.config.vision_config.num_hidden_layers
        return layer % (total + 1) if layer < 0 else layer

    @property
    def grid(self) -> tuple[int, int]:
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        return side, side

    @property
    def image_size(self) -> int:
        return self.config.vision_config.image_size

    @property
    def llm_hidden(self) -> int:
        return self.config.text_config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.config.vision_config.num_hidden_layers


def vision_parts(model: torch.nn.Module) -> VisionParts:
    inner = getattr(model, "model", model)
    return VisionParts(inner.vision_tower, inner.multi_modal_projector, model.config)
