"""Saved random-weight checkpoints of the scaled benchmark models, so that Hugging Face
transformers and our engines run the very same weights.

`bench_ttft.py` builds its engines with `--random-weights`, which exports a decoder nobody else
can load. A side-by-side benchmark needs one model that `LlavaForConditionalGeneration
.from_pretrained` reads and `python -m exporter build --model DIR` exports, so this module
writes a real checkpoint directory (config, safetensors, processor) for the scaled shapes of
`bench_ttft.register_scaled_spec`, with the built-in tiny model's tokenizer and processor (the
same chat format; 7B's vocabulary size stays in the LM head's cost). It is cached like the tiny
model and rebuilt when its recipe version changes.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

RECIPE_VERSION = 1
SEED = 20260615


def checkpoint_dir(name: str) -> Path:
    from models.tiny import cache_root

    return cache_root() / "models" / f"{name}-ckpt-v{RECIPE_VERSION}"


def _sharpen_attention(tower, gen) -> None:
    """Random init (std 0.02) gives nearly uniform CLIP attention, so patch scores would differ
    in the 6th digit and the papers' path and ours could pick different tokens from rounding
    alone. Query/key weights of std 2/sqrt(width) give attention logits of std ~4, the spread
    the tiny model has (its std 0.25 at width 64); the FLOPs do not change."""
    import torch

    from models.parts import clip_core

    with torch.no_grad():
        for layer in clip_core(tower).encoder.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                std = 2.0 / proj.weight.shape[1] ** 0.5
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) * std)


def _config(name: str, tokenizer):
    from models.specs import SPECS, llava_config

    config = llava_config(SPECS[name])
    image = tokenizer.convert_tokens_to_ids("<image>")
    config.image_token_index = image
    config.image_token_id = image
    config.pad_token_id = tokenizer.pad_token_id
    config.image_seq_length = 576
    text = config.text_config
    text.bos_token_id, text.eos_token_id, text.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return config


def build_checkpoint(name: str, dest: Path) -> None:
    import torch
    import transformers
    from transformers import AutoProcessor

    from bench_ttft import register_scaled_spec
    from models.specs import SPECS
    from models.tiny import TINY_NAME, TINY_NEXT_NAME, ensure_tiny_checkpoint

    register_scaled_spec()
    spec = SPECS[name]
    next_model = spec.architecture == "LlavaNextForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(ensure_tiny_checkpoint(TINY_NEXT_NAME if next_model else TINY_NAME),
                                              local_files_only=True)
    config = _config(name, processor.tokenizer)
    torch.manual_seed(SEED)
    model = getattr(transformers, spec.architecture)(config).eval()
    _sharpen_attention(model.model.vision_tower, torch.Generator().manual_seed(SEED + 1))
    model.save_pretrained(dest)
    processor.save_pretrained(dest)


def ensure_checkpoint(name: str) -> Path:
    """The checkpoint directory of a scaled model (built once, atomically) or of a built-in tiny
    model (returned as is: it is a real checkpoint already)."""
    from models.tiny import TINY_VERSIONS, build_once, ensure_tiny_checkpoint

    if name in TINY_VERSIONS:
        return ensure_tiny_checkpoint(name)
    return build_once(checkpoint_dir(name), lambda folder: build_checkpoint(name, folder))
