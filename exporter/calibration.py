"""AWQ calibration activations from the model's own vision path and chat template.

The images go through the vision graph this build just wrote (vision.onnx on ONNX Runtime, so
the pruned K tokens are the ones the decoder will really see) and the prompts through the
runtime's own chat formatting (`runtime.inputs.Inputs`), then the decoder's input embeddings are
assembled exactly as the prompt-table lookup does. `LayerFeeder` then walks the language model one
layer at a time, capturing what each group of linear layers reads, so a 7B model never holds
more than one layer's activations.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from runtime.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DEFAULT_PROMPTS = ("Describe the image in detail.", "What is in the picture?",
                   "What objects can you see, and where are they?")


def calibration_images(folder: Path) -> list[Path]:
    """Every image file in `folder`, each checked readable (bad input -> UserError, before any
    export work starts)."""
    from runtime.images import load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--calib-images {folder} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--calib-images {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for path in files:
        load_image(path)  # UserError names the file
    return files


def calibration_prompts(path: Path | None) -> list[str]:
    if path is None:
        return list(DEFAULT_PROMPTS)
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --calib-prompts {path}: {exc}") from None
    prompts = [line for line in lines if line]
    if not prompts:
        raise UserError(f"--calib-prompts {path} holds no prompts (one per line)")
    return prompts


def calibration_embeds(engine, images: Sequence[Path], prompts: Sequence[str],
                       embed_tokens: torch.nn.Module) -> list[torch.Tensor]:
    """One (T, hidden) float32 input-embedding sequence per image (prompts cycle over images):
    the chat template's token embeddings with the image placeholder replaced by the K rows the
    vision graph gives, as the prompt-table lookup does. `engine` is the runtime's view of the
    directory being built (vision, text and processor written; no decoder yet)."""
    from runtime.backends import provider
    from runtime.inputs import Inputs
    from runtime.text_embeds import TextEmbedder

    ort = provider("onnxruntime")
    inputs = Inputs(engine)
    vision = ort.vision(engine)
    text = TextEmbedder.for_backend(engine, ort) if vision.takes_text else None
    out = []
    for n, image in enumerate(images):
        prompt = prompts[n % len(prompts)]
        ids = inputs.prompts.image_prompt_ids(prompt)
        where = ids.index(inputs.image_token_id)
        px = inputs.pixel_values([image], vision.input_dtype)
        feats = vision(px, text_embeds=text([prompt]) if text is not None else None).features[0]
        with torch.no_grad():
            before = embed_tokens(torch.tensor(ids[:where])).float()
            after = embed_tokens(torch.tensor(ids[where + 1:])).float()
        out.append(torch.cat([before, torch.from_numpy(np.asarray(feats, np.float32)), after]))
    return out


class LayerFeeder:
    """Hidden states of the calibration sequences, advanced one decoder layer at a time."""

    def __init__(self, language, samples: list[torch.Tensor]):
        self.language = language
        self.hidden = [s.float()[None] for s in samples]  # (1, T, H) each

    def _run(self, layer, h: torch.Tensor) -> torch.Tensor:
        t = h.shape[1]
        pos = torch.arange(t)[None]
        cos, sin = self.language.rotary_emb(h, pos)
        mask = torch.full((t, t), torch.finfo(torch.float32).min).triu(1)[None, None]
        out = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=(cos, sin))
        return out[0] if isinstance(out, tuple) else out

    def capture(self, i: int) -> dict[str, torch.Tensor]:
        """Run layer i (float32 copy) on every sequence, record what each AWQ group reads
        (concatenated over sequences: (sum T, K)), and advance the hidden states."""
        import copy

        layer = copy.deepcopy(self.language.layers[i]).float()
        seen: dict[str, list[torch.Tensor]] = {"qkv": [], "o": [], "gate_up": [], "down": []}
        taps = {"qkv": layer.self_attn.q_proj, "o": layer.self_attn.o_proj,
                "gate_up": layer.mlp.gate_proj, "down": layer.mlp.down_proj}
        hooks = [module.register_forward_pre_hook(lambda _m, args, key=key: seen[key].append(args[0][0].detach()))
                 for key, module in taps.items()]
        try:
            with torch.no_grad():
                self.hidden = [self._run(layer, h) for h in self.hidden]
        finally:
            for hook in hooks:
                hook.remove()
        return {key: torch.cat(rows, dim=0) for key, rows in seen.items()}
