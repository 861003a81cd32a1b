"""The pruned vision graph: CLIP up to the feature layer, attention scores only where the
method needs them, in-graph selection, gather, and the projector on the K kept rows.

Written as its own nn.Module over the checkpoint's submodules (rather than calling the HF
forward with output_attentions) so that only the scored layers materialise attention
probabilities, the others keep the fused attention pattern TensorRT recognises, layer 24 is
never computed, and fp16 graphs keep LayerNorm, softmax and score reductions in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.parts import VisionParts
from runtime.contract import Tensors

from .pruning import PruneConfig, vectorized

Selector = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def standard_selector(cfg: PruneConfig) -> Selector:
    """The standard-op selection (runs everywhere; the plugin selector replaces it in TensorRT)."""

    def select(layer_rows: torch.Tensor, similarity: torch.Tensor | None) -> torch.Tensor:
        return vectorized.select(cfg, layer_rows, similarity)

    return select


@dataclass
class Encoded:
    """What the encoder hands to the selection: the feature layer's output (with CLS), the
    column-mean scores of the method's layers, and for SCOPE / VisionZip the CLS query row of
    the CLS layer (B, 1+N) float32 and, for VisionZip, that layer's head-mean keys (B, 1+N, Dk)."""

    features: torch.Tensor
    scores: dict[int, torch.Tensor]
    cls_scores: torch.Tensor | None = None
    keys: torch.Tensor | None = None


def debug_output_names(cfg: PruneConfig) -> list[str]:
    """Extra outputs of a `--debug-scores` graph: the statistic the method ranks by (and
    VisionZip's assignment of every patch)."""
    if cfg.method == "visionzip":
        return [Tensors.CLS_SCORES, Tensors.TOKEN_ASSIGNMENT]
    if cfg.method == "scope":
        return [Tensors.CLS_SCORES]
    return [Tensors.LAYER_SCORES]


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm in float32 whatever the graph dtype: CLIP activations overflow it in fp16."""
    return F.layer_norm(
        x.float(), module.normalized_shape, module.weight.float(), module.bias.float(), module.eps
    ).to(x.dtype)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, d = x.shape
    return x.reshape(b, s, heads, d // heads).transpose(1, 2)


class PrunedVisionGraph(nn.Module):
    def __init__(
        self,
        parts: VisionParts,
        cfg: PruneConfig,
        *,
        selector: Selector | None = None,
        debug_scores: bool = False,
        clip_projection: nn.Module | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.clip = parts.clip
        self.projector = parts.projector
        self.heads = parts.config.vision_config.num_attention_heads
        self.run_layers = parts.feature_layer
        self.score_layers = tuple(cfg.layers)
        self.selector = selector or standard_selector(cfg)
        self.debug_scores = debug_scores
        self.clip_projection = clip_projection
        if cfg.uses_prompt and clip_projection is None:
            raise ValueError("hiprune++ needs the CLIP visual projection of a text tower")
        self.cls_layer = cfg.cls_layer_index if cfg.uses_cls_row else None
        tapped = self.score_layers + ((self.cls_layer,) if self.cls_layer is not None else ())
        last_needed = max(tapped, default=-1) + 1
        self.total_layers = max(self.run_layers, last_needed)

    # -- attention ------------------------------------------------------------------------
    def _qkv(self, attn: nn.Module, x: torch.Tensor):
        return (
            _split_heads(attn.q_proj(x), self.heads),
            _split_heads(attn.k_proj(x), self.heads),
            _split_heads(attn.v_proj(x), self.heads),
        )

    def _merge(self, attn: nn.Module, out: torch.Tensor) -> torch.Tensor:
        b, h, s, d = out.shape
        return attn.out_proj(out.transpose(1, 2).reshape(b, s, h * d))

    def _fused_attention(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(attn, x)
        return self._merge(attn, F.scaled_dot_product_attention(q, k, v, scale=attn.scale))

    def _scored_attention(self, attn: nn.Module, x: torch.Tensor, need_output: bool):
        """Explicit probabilities (float32 softmax), reduced at once to the layer score: the mean
        over heads and query rows of the attention each token receives.

        The mean over query rows is a (1, S) x (S, S) MatMul per head with weights 1/S (a GEMV
        that reads the probabilities once, contiguously), then the mean over heads: ONNX
        Runtime's ReduceMean over axes (1, 2) of the (B, H, S, S) map takes ~26 ms per scored
        layer at the 7B shape against ~1.6 ms this way (scripts/profile_vision.py)."""
        q, k, v = self._qkv(attn, x)
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() * attn.scale, dim=-1)
        rows = probs.shape[-2]
        per_row = torch.full((1, 1, 1, rows), 1.0 / rows, dtype=probs.dtype, device=probs.device)
        score = torch.matmul(per_row, probs).mean(dim=1)[:, 0]  # (B, 1+N) float32
        out = self._merge(attn, torch.matmul(probs.to(v.dtype), v)) if need_output else None
        return out, score

    def _cls_attention(self, attn: nn.Module, x: torch.Tensor):
        """The fused attention for every query (the layer's output), plus only the CLS query's
        probability row (float32 softmax, mean over heads) and the head-mean keys: SCOPE and
        VisionZip read nothing else of this layer, so its full probability map never exists."""
        q, k, v = self._qkv(attn, x)
        out = self._merge(attn, F.scaled_dot_product_attention(q, k, v, scale=attn.scale))
        logits = torch.matmul(q[:, :, :1], k.transpose(-1, -2)).float() * attn.scale  # (B, H, 1, S)
        cls_row = torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]  # (B, S) float32
        keys = k.float().mean(dim=1) if self.cfg.method == "visionzip" else None  # (B, S, Dk)
        return out, cls_row, keys

    # -- forward ----------------------------------------------------------------------------
    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        """Hidden state after `run_layers` layers, the scores of the method's layers and the
        CLS-layer taps of SCOPE / VisionZip."""
        dtype = self.clip.embeddings.patch_embedding.weight.dtype
        h = self.clip.embeddings(pixel_values.to(dtype))
        h = _layer_norm(self.clip.pre_layrnorm, h)
        encoded = Encoded(h, {})
        scores = encoded.scores
        for i in range(self.total_layers):
            layer = self.clip.encoder.layers[i]
            x = _layer_norm(layer.layer_norm1, h)
            need_output = i < self.run_layers
            if i in self.score_layers:
                attn_out, scores[i] = self._scored_attention(layer.self_attn, x, need_output)
            elif i == self.cls_layer:
                attn_out, encoded.cls_scores, encoded.keys = self._cls_attention(layer.self_attn, x)
            else:
                attn_out = self._fused_attention(layer.self_attn, x)
            if not need_output:
                continue
            h = h + attn_out
            h = h + layer.mlp(_layer_norm(layer.layer_norm2, h))
            if i == self.run_layers - 1:
                encoded.features = h
        return encoded

    def prompt_similarity(self, patch_features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Cosine between each patch's CLIP image embedding and the prompt's text embedding."""
        image = self.clip_projection(_layer_norm(self.clip.post_layernorm, patch_features)).float()
        image = image / image.norm(dim=-1, keepdim=True)
        text = text_embeds.float()
        text = text / text.norm(dim=-1, keepdim=True)
        return torch.matmul(image, text.unsqueeze(-1)).squeeze(-1)

    def forward(self, pixel_values: torch.Tensor, text_embeds: torch.Tensor | None = None):
        encoded = self.encode(pixel_values)
        features, scores = encoded.features, encoded.scores
        patches = features[:, 1:]
        debug: list[torch.Tensor] = []
        if self.cfg.method == "none":
            kept = self.selector(patches[..., :0, 0].unsqueeze(1), None)
            selected = patches
        elif self.cfg.method == "scope":
            steps = vectorized.scope_steps(self.cfg, encoded.cls_scores[:, 1:], patches, self.cfg.keep)
            kept = vectorized.scope_select(self.cfg, steps)
            selected = gather_rows(patches, kept)
            debug = [encoded.cls_scores]
        elif self.cfg.method == "visionzip":
            tokens, kept, assignment = vectorized.visionzip(
                self.cfg, encoded.cls_scores[:, 1:], features, encoded.keys, with_assignment=self.debug_scores
            )
            selected = tokens.to(features.dtype)
            debug = [encoded.cls_scores, assignment]
        else:
            rows = torch.stack([scores[i][:, 1:] for i in self.score_layers], dim=1)
            similarity = None
            if self.cfg.uses_prompt:
                similarity = self.prompt_similarity(patches, text_embeds)
            kept = self.selector(rows, similarity)
            selected = gather_rows(patches, kept)
        visual = self.projector(selected)
        outputs = [visual, kept]
        if self.debug_scores:
            if self.cfg.uses_cls_row:
                outputs.extend(debug)
            else:
                outputs.append(torch.stack([scores[i] for i in self.score_layers], dim=1)
                               if self.score_layers else features[:, :, :0].float().unsqueeze(1))
        return tuple(outputs)


def gather_rows(patches: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """patches[b, kept[b, i]]: (B, N, D), (B, K) -> (B, K, D)."""
    return torch.gather(patches, 1, kept.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
