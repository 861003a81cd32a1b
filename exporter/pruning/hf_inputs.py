"""SCOPE's and VisionZip's inputs read off a Hugging Face CLIP vision tower (PRUNING.md 8.2).

The layer map in one place, for the tests and the runtime's torch reference backend: the CLS
query row of `attentions[-2]`, `hidden_states[-2]` with its CLS row, and the head-mean keys of
`encoder.layers[-2]` (its k_proj output, caught with a forward hook because the HF forward does
not return keys). The exported graph computes the same three tensors on its own
(exporter.vision_graph); the parity tests compare the two.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cls_attention, head_mean_keys


@dataclass(frozen=True)
class ClsRowInputs:
    cls_scores: torch.Tensor  # (B, 1+N) float32, CLS key at column 0
    hidden_states: torch.Tensor  # (B, 1+N, D), CLS row first
    keys: torch.Tensor  # (B, 1+N, Dk) float32

    @property
    def patches(self) -> torch.Tensor:
        """(B, N, D): the projector's input rows (SCOPE's `features`)."""
        return self.hidden_states[:, 1:]


def cls_row_inputs(vision_tower: torch.nn.Module, pixel_values: torch.Tensor, layer: int = -2) -> ClsRowInputs:
    """One eager forward of `vision_tower` (a CLIPVisionModel or its core) on `pixel_values`;
    `layer` indexes both `attentions` / `encoder.layers` and `hidden_states` from the end
    (-2: encoder layer L-1, the layer LLaVA's features come from)."""
    core = getattr(vision_tower, "vision_model", vision_tower)
    attention = core.encoder.layers[layer].self_attn
    caught: dict[str, torch.Tensor] = {}
    hook = attention.k_proj.register_forward_hook(lambda _m, _i, out: caught.__setitem__("keys", out))
    config = vision_tower.config
    previous = getattr(config, "_attn_implementation", None)
    config._attn_implementation = "eager"  # probabilities, not a fused kernel
    try:
        with torch.no_grad():
            out = vision_tower(pixel_values, output_attentions=True, output_hidden_states=True)
    finally:
        hook.remove()
        if previous is not None:
            config._attn_implementation = previous
    return ClsRowInputs(
        cls_attention(out.attentions[layer]),
        out.hidden_states[layer],
        head_mean_keys(caught["keys"], config.num_attention_heads),
    )
