"""Typed config.json records for tests that need only some sections: the given sections are
real, the rest are placeholders the code under test never reads."""
from __future__ import annotations

from typing import Any

from runtime.contract import EngineConfig, parse

MODEL = {"name": "tiny-llava", "source": "builtin", "path": None, "architecture": "LlavaForConditionalGeneration",
         "model_type": "llava", "vision_layers": 24, "vision_hidden": 64, "llm_hidden": 64, "image_size": 336,
         "patch_size": 14, "vision_feature_layer": -2}
VISION = {
    "onnx": "vision.onnx", "onnx_files": ["vision.onnx"], "engine": None, "selector": "onnx",
    "selector_reason": "test", "inputs": [{"name": "pixel_values", "shape": [-1, 3, 336, 336], "dtype": "float32"}],
    "outputs": [],
    "pruning": {"method": "hiprune", "keep": 64, "grid": [24, 24], "num_layers": 24, "params": {},
                "score_layers": [8, 22], "output_tokens": 64},
    "preprocess": {"image_size": 336, "mean": [0.5] * 3, "std": [0.5] * 3, "processor": "processor"},
}


def engine_config(vision: dict[str, Any] | None = None, **sections: Any) -> EngineConfig:
    """An EngineConfig whose `vision` fields are VISION updated with `vision`; other sections
    (text, decoder, ...) as given, in their config.json form."""
    return parse(EngineConfig, {
        "format": "edgeprune-engine-dir", "format_version": 2, "precision": "fp32", "max_batch": 1, "model": MODEL,
        "vision": {**VISION, **(vision or {})},
        "engine": {"backend": None, "version": None, "built": False, "reason": "test"}, "artifacts": {},
        **sections,
    })


DECODER = {
    "onnx": "decoder.onnx", "onnx_data": "decoder.onnx.data", "engine": None, "precision": "fp16",
    "dtype": "float16", "weights": "checkpoint", "seed": None, "architecture": "llama", "vocab_size": 32064,
    "hidden_size": 4096, "num_layers": 32, "num_heads": 32, "num_kv_heads": 32, "head_dim": 128, "max_batch": 1,
    "max_input_len": 1024, "max_output_len": 1024, "max_seq_len": 2048, "visual_tokens": 576, "prompt_table": {},
    "tokens": {"image_token_id": 32000, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001},
    "inputs": [], "outputs": [], "profiles": [], "intermediate_size": 11008, "kv_cache": "inplace",
}


def decoder_section(**fields: Any) -> dict[str, Any]:
    """A LLaVA-1.5-7B-shaped `decoder` section (config.json form) updated with `fields`."""
    return {**DECODER, **fields}
