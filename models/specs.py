"""Checkpoint facts from MODELS.md, so shape-exact models can be built without downloads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LLAVA_CHAT_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"

CLIP_VIT_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

VICUNA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "vocab_size": 32064,
}

VICUNA_13B = {
    **VICUNA_7B,
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
}

LLAVA_TOP = {
    "image_token_index": 32000,
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "tie_word_embeddings": False,
    "vocab_size": 32064,
}


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    hf_id: str
    architecture: str  # transformers class name
    top: dict[str, Any]
    text: dict[str, Any]
    vision: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


SPECS: dict[str, ModelSpec] = {
    "llava-1.5-7b": ModelSpec(
        "llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", "LlavaForConditionalGeneration",
        LLAVA_TOP, VICUNA_7B, CLIP_VIT_L_336,
    ),
    "llava-1.5-13b": ModelSpec(
        "llava-1.5-13b", "llava-hf/llava-1.5-13b-hf", "LlavaForConditionalGeneration",
        LLAVA_TOP, VICUNA_13B, CLIP_VIT_L_336,
    ),
}

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

LLAVA_NEXT_TOP = {
    "image_token_index": 32000,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "tie_word_embeddings": False,
    "image_grid_pinpoints": LLAVA_NEXT_PINPOINTS,
    "use_image_newline_parameter": True,
}

SPECS["llava-next-7b"] = ModelSpec(
    "llava-next-7b", "llava-hf/llava-v1.6-vicuna-7b-hf", "LlavaNextForConditionalGeneration",
    LLAVA_NEXT_TOP, VICUNA_7B, CLIP_VIT_L_336,
)

ALIASES = {alias: spec.hf_id for alias, spec in SPECS.items()}


def spec_for(name: str) -> ModelSpec | None:
    """The spec for an alias or its Hugging Face id."""
    if name in SPECS:
        return SPECS[name]
    for spec in SPECS.values():
        if spec.hf_id == name:
            return spec
    return None


def llava_config(spec: ModelSpec):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

    config_class = LlavaNextConfig if spec.architecture == "LlavaNextForConditionalGeneration" else LlavaConfig
    return config_class(
        vision_config=CLIPVisionConfig(**spec.vision),
        text_config=LlamaConfig(**spec.text),
        **spec.top,
    )
