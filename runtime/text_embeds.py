"""The prompt's CLIP text embedding, which HiPrune++ engines take as `text_embeds`.

The text tower is not part of the engine directory (LLaVA checkpoints carry only CLIP's vision
half), so it is found the way the build found it: `vision.text_tower` in config.json when the
build recorded it, else the checkpoint's `clip/` folder, else the CLIP checkpoint LLaVA-1.5 was
trained with in the local Hugging Face cache.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from exporter.errors import UserError

from .engine_dir import EngineDir

MAX_CLIP_TOKENS = 77


@lru_cache(maxsize=2)
def _clip(path: str):
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:
        tokenizer = None
    return clip, tokenizer


def _text_tower_path(engine: EngineDir) -> str:
    recorded = engine.vision.get("text_tower")
    candidates = [recorded] if recorded else []
    model_path = engine.config.get("model", {}).get("path")
    if model_path:
        candidates.append(str(Path(model_path) / "clip"))
    for c in candidates:
        if c and (Path(c) / "config.json").is_file():
            return c
    try:
        from huggingface_hub import snapshot_download

        from models.text_tower import DEFAULT_CLIP

        return snapshot_download(DEFAULT_CLIP, local_files_only=True)
    except Exception:
        raise UserError("this hiprune++ engine needs the CLIP text tower at run time and none was found "
                        "(checkpoint clip/ folder or openai/clip-vit-large-patch14-336 in the HF cache)") from None


class TextEmbedder:
    def __init__(self, engine: EngineDir, fallback_tokenizer=None):
        self.clip, tokenizer = _clip(_text_tower_path(engine))
        self.tokenizer = tokenizer or fallback_tokenizer  # the tiny model's CLIP shares the LLaVA vocabulary
        if self.tokenizer is None:
            raise UserError("the CLIP text tower has no tokenizer")

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        rows = []
        with torch.no_grad():
            for p in prompts:  # one at a time: no padding, so a batch equals its requests alone
                ids = self.tokenizer(p, truncation=True, max_length=MAX_CLIP_TOKENS, return_tensors="pt")
                out = self.clip.get_text_features(input_ids=ids["input_ids"])
                out = getattr(out, "pooler_output", out)
                rows.append(out[0].float())
        return torch.stack(rows).numpy()

    def similarity(self, vision_tower, patch_features, text: np.ndarray):
        """Cosine between each patch's CLIP image embedding and the prompt embedding (the same
        formula the exported graph uses)."""
        import torch

        clip = getattr(vision_tower, "vision_model", vision_tower)
        image = self.clip.visual_projection(clip.post_layernorm(patch_features)).float()
        image = image / image.norm(dim=-1, keepdim=True)
        t = torch.from_numpy(text).float()
        t = t / t.norm(dim=-1, keepdim=True)
        return torch.matmul(image, t.unsqueeze(-1)).squeeze(-1)
