"""The torch reference for LLaVA-NeXT engine directories (the ground truth of the parity tests).

Pruned methods: the HF vision tower runs eagerly on each view with attention maps, and the
project's reference selector (`exporter.pruning.select_tokens`) picks each view's tokens with its
own K_view, exactly as PRUNING.md section 6 states the rule; the kept rows go through the HF
projector. Views run one at a time: the attention maps of a whole batch of views (24 layers of
16 x 577 x 577 each) would not fit a CPU machine for the 7B tower, and a view's result must not
depend on its neighbours anyway.

Method none: the HF model's own `get_image_features(pixel_values, image_sizes)`, i.e. the stock
LLaVA-NeXT path with unpadding and `image_newline`, so the baseline is the real model's
behaviour rather than a second copy of our packing code.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from exporter.errors import UserError

from .anyres import AnyresSpec


def pruned_views(vision, pixel_values: np.ndarray, prompts: Sequence[str],
                 view_budget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`vision` is a TorchVision. Returns the engine's layout: features (V, R, H) and kept
    indices (V, R) with -1 past each view's own count (R = the widest branch)."""
    from .vision_backends import _prompt_embeds

    torch = vision.torch
    spec = AnyresSpec.from_config(vision.anyres)
    method, params = vision.pruning["method"], vision.pruning.get("params", {})
    outputs = dict(spec.budgets.values())  # K_view -> output tokens per view
    text = _prompt_embeds(vision.text, prompts) if vision.text is not None else None
    views, rows = len(pixel_values), spec.rows_per_view
    features = np.zeros((views, rows, vision.model.config.text_config.hidden_size), np.float32)
    kept = np.full((views, rows), -1, np.int64)
    layer = vision.model.config.vision_feature_layer
    with torch.no_grad():
        for v in range(views):
            k_view = int(view_budget[v])
            if k_view not in outputs:
                raise UserError(f"view {v} asks for K_view {k_view}; the engine has branches for "
                                f"{', '.join(map(str, sorted(outputs)))}")
            out = vision.parts.vision_tower(torch.from_numpy(pixel_values[v:v + 1]).float(),
                                            output_hidden_states=True, output_attentions=True)
            patches = out.hidden_states[layer][:, 1:]
            extra = {}
            if text is not None:
                extra["text_similarity"] = vision.text.similarity(vision.parts.vision_tower, patches, text[v:v + 1])
            chosen = vision.select(method, vision.layer_scores(out.attentions), k_view, grid=spec.grid,
                                   **params, **extra)
            count = chosen.shape[1]
            if count != outputs[k_view]:
                raise UserError(f"the reference kept {count} tokens for K_view {k_view}; config.json says "
                                f"{outputs[k_view]}: the engine directory was built with other parameters")
            picked = torch.gather(patches, 1, chosen[..., None].expand(-1, -1, patches.shape[-1]))
            features[v, :count] = vision.parts.projector(picked)[0].float().numpy()
            kept[v, :count] = chosen[0].numpy()
    return features, kept


def stock_features(model, pixel_values: np.ndarray, image_sizes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Each image's packed visual tokens from the HF model itself; `pixel_values` are all views
    of the batch (base first per image), `image_sizes` each image's (h, w)."""
    import torch

    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.from_numpy(np.asarray(pixel_values, np.float32)),
                                       image_sizes=torch.tensor([list(s) for s in image_sizes], dtype=torch.int64))
    feats = getattr(out, "pooler_output", None)
    if feats is None:  # transformers releases that return (features, lengths)
        feats = out[0]
    return [f.float().numpy() for f in feats]
