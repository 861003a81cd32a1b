"""The torch reference backend (`--backend torch`): the checkpoint's own HF modules, run eagerly
with attention maps, and the project's reference selection (`exporter.pruning.select_tokens`).
It is the ground truth the ONNX Runtime and TensorRT backends are compared against, so it
shares nothing with the exported graphs but the engine directory's recorded settings.

It ships with the exporter (it needs torch, transformers, the checkpoint and the pruning
reference); the runtime's registry imports it by name only when asked for it.

LLaVA-NeXT: pruned methods run each view alone with its own K_view (PRUNING.md 6; the attention
maps of a whole batch of 7B views would not fit a CPU machine, and a view's result must not
depend on its neighbours anyway). Method none uses the HF model's own
`get_image_features(pixel_values, image_sizes)`, the stock path with unpadding and
`image_newline`, rather than a second copy of our packing code.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
import numpy as np
import torch

from runtime.backends.base import StepDecoder, TextBackend, VisionBackend, VisionOutput
from runtime.contract import EngineDir, Tensors, tensor
from runtime.errors import EngineDirError, UserError, one_line

from .pruning import layer_scores, make_config, select_tokens, visionzip
from .pruning.hf_inputs import cls_row_inputs

NAME = "torch"
CLS_ROW_METHODS = ("scope", "visionzip")  # read the layer-23 CLS row, not column-mean layer scores


def _gather(rows: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    return torch.gather(rows, 1, kept[..., None].expand(-1, -1, rows.shape[-1]))


@lru_cache(maxsize=2)
def checkpoint_model(name: str, path: str | None):
    """The full HF LLaVA model behind an engine directory (vision and decoder share one copy)."""
    from models import load_model

    source = path if path and os.path.isdir(path) else name
    try:
        loaded = load_model(source)
    except Exception as exc:
        raise UserError(f"--backend torch needs the checkpoint {name!r}: {one_line(exc)}") from None
    if loaded.model is None:
        raise UserError("--backend torch needs a checkpoint with weights, not a random-weight engine")
    return loaded.model.float().eval()


def _model(engine: EngineDir):
    info = engine.config.model
    return checkpoint_model(info.name, info.path)


# ---- CLIP text tower and visual projection (HiPrune++) ---------------------------------------
def _text_source(engine: EngineDir) -> str:
    if engine.text is None:
        raise EngineDirError(f"{engine.path} has no CLIP text tower section (hiprune++ needs one): rebuild it")
    return engine.text.source


@lru_cache(maxsize=2)
def _text_tower(source: str, seed: int, tokenizer_folder: str):
    from models.loading import CheckpointError
    from models.text_tower import RANDOM_SOURCE, random_text_tower, text_tower_from_path

    if source == RANDOM_SOURCE:
        from transformers import AutoTokenizer

        return random_text_tower(AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True), seed)
    if not (Path(source) / "config.json").is_file():
        raise UserError(f"--backend torch needs the CLIP text tower the engine was built from ({source}), "
                        "which is not there any more")
    try:
        return text_tower_from_path(source)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


@lru_cache(maxsize=2)
def _visual_projection(source: str):
    from models.loading import CheckpointError
    from models.text_tower import RANDOM_SOURCE, visual_projection_from_path

    if source == RANDOM_SOURCE or not (Path(source) / "config.json").is_file():
        raise UserError(f"the torch reference needs the CLIP checkpoint the engine was built from ({source})")
    try:
        return visual_projection_from_path(source)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


class TorchText(TextBackend):
    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0):
        sec = engine.text
        folder = engine.folder(sec.tokenizer, "text tokenizer")
        self.tower = _text_tower(_text_source(engine), int(sec.seed or 0), str(folder))

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.tower(input_ids=torch.from_numpy(input_ids)).text_embeds.float().numpy()


def prompt_similarity(source: str, vision_tower, patch_features: torch.Tensor, text_embeds: np.ndarray) -> torch.Tensor:
    """Cosine between each patch's CLIP image embedding and the prompt embedding (the formula
    the exported graph uses), with the visual projection of the recorded CLIP."""
    projection = _visual_projection(source)
    clip = getattr(vision_tower, "vision_model", vision_tower)
    image = projection(clip.post_layernorm(patch_features)).float()
    image = image / image.norm(dim=-1, keepdim=True)
    text = torch.from_numpy(np.asarray(text_embeds, np.float32))
    text = text / text.norm(dim=-1, keepdim=True)
    return torch.matmul(image, text.unsqueeze(-1)).squeeze(-1)


# ---- vision ----------------------------------------------------------------------------------
class TorchVision(VisionBackend):
    name = NAME
    packs_stock_anyres = True

    def __init__(self, engine: EngineDir, threads: int = 0):
        from models import vision_parts

        self.model = _model(engine)
        self.parts = vision_parts(self.model)
        self.parts.vision_tower.config._attn_implementation = "eager"
        self.pruning = engine.vision.pruning
        self.anyres = engine.anyres
        # the same optional inputs as the exported graph (hiprune++ with t = 0 takes no prompt)
        self.takes_text = tensor(engine.vision.inputs, Tensors.TEXT_EMBEDS) is not None
        self.takes_budget = tensor(engine.vision.inputs, Tensors.VIEW_BUDGET) is not None
        self.text_source = engine.text.source if self.takes_text and engine.text is not None else None

    @property
    def input_dtype(self) -> str:
        return "float32"

    def _select(self, out, keep: int, text_embeds, grid) -> torch.Tensor:
        patches = out.hidden_states[self.model.config.vision_feature_layer][:, 1:]
        extra = {}
        if self.takes_text:
            extra["text_similarity"] = prompt_similarity(self.text_source, self.parts.vision_tower, patches, text_embeds)
        elif self.pruning.method == "hiprune++":  # t = 0: no prompt-aware token, the similarity is never read
            extra["text_similarity"] = torch.zeros(patches.shape[:2])
        return select_tokens(self.pruning.method, layer_scores(out.attentions), keep, grid=tuple(grid),
                             **self.pruning.params, **extra)

    def _tower(self, pixel_values: np.ndarray, attentions: bool):
        return self.parts.vision_tower(torch.from_numpy(np.asarray(pixel_values, np.float32)),
                                       output_hidden_states=True, output_attentions=attentions)

    def _selected(self, pixel_values: np.ndarray, keep: int | None, text_embeds, grid) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows for the projector (B, k, D), kept (B, k)) by the reference rules. VisionZip's rows
        are [CLS, dominant, contextual] with kept -1 for the CLS row and each contextual token's
        target patch for the merged rows, as the graph reports them."""
        method, params, grid = self.pruning.method, self.pruning.params, tuple(grid)
        if method in CLS_ROW_METHODS:
            taps = cls_row_inputs(self.parts.vision_tower, torch.from_numpy(np.asarray(pixel_values, np.float32)))
            if method == "scope":
                kept = select_tokens("scope", None, keep, grid=grid, cls_scores=taps.cls_scores, features=taps.patches,
                                     **params)
                return _gather(taps.patches, kept), kept
            cfg = make_config("visionzip", keep, grid=grid, num_layers=self.pruning.num_layers, **params)
            z = visionzip(cls_scores=taps.cls_scores, hidden_states=taps.hidden_states, keys=taps.keys,
                          dominant=cfg.dominant, contextual=cfg.contextual, grid=grid)
            cls = torch.full((z.dominant.shape[0], 1), -1, dtype=torch.int64)
            return z.tokens, torch.cat([cls, z.dominant, z.targets], dim=1)
        out = self._tower(pixel_values, method != "none")
        patches = out.hidden_states[self.model.config.vision_feature_layer][:, 1:]
        if method == "none":
            kept = torch.arange(patches.shape[1]).expand(patches.shape[0], -1)
        else:
            kept = self._select(out, keep, text_embeds, grid)
        return _gather(patches, kept), kept

    def __call__(self, pixel_values, *, text_embeds=None, view_budget=None) -> VisionOutput:
        if self.takes_budget:
            return self._pruned_views(pixel_values, text_embeds, view_budget)
        with torch.no_grad():
            rows, kept = self._selected(pixel_values, self.pruning.keep, text_embeds, self.pruning.grid)
            return VisionOutput(self.parts.projector(rows).numpy(), kept.numpy().astype(np.int64))

    def _pruned_views(self, pixel_values, text_embeds, view_budget) -> VisionOutput:
        """The anyres engine's layout: features (V, R, H), kept (V, R), -1 past each view's count."""
        spec = self.anyres
        outputs = {b.keep: b.output for b in spec.view_budgets}  # K_view -> tokens per view
        rows = max(outputs.values())
        views = len(pixel_values)
        features = np.zeros((views, rows, self.model.config.text_config.hidden_size), np.float32)
        kept = np.full((views, rows), -1, np.int64)
        with torch.no_grad():
            for v in range(views):
                k_view = int(view_budget[v])
                if k_view not in outputs:
                    raise UserError(f"view {v} asks for K_view {k_view}; the engine has branches for "
                                    f"{', '.join(map(str, sorted(outputs)))}")
                text = None if text_embeds is None else text_embeds[v:v + 1]
                picked, chosen = self._selected(pixel_values[v:v + 1], k_view, text, spec.patch_grid)
                count = chosen.shape[1]
                if count != outputs[k_view]:
                    raise EngineDirError(f"the reference kept {count} tokens for K_view {k_view}; config.json says "
                                         f"{outputs[k_view]}: the engine directory was built with other parameters")
                features[v, :count] = self.parts.projector(picked)[0].float().numpy()
                kept[v, :count] = chosen[0].numpy()
        return VisionOutput(features, kept)

    def stock_anyres_features(self, pixel_values: np.ndarray, image_sizes) -> list[np.ndarray]:
        """Each image's packed visual tokens from the HF model itself; `pixel_values` are all
        views of the batch (base first per image), `image_sizes` each image's (h, w)."""
        with torch.no_grad():
            out = self.model.get_image_features(
                pixel_values=torch.from_numpy(np.asarray(pixel_values, np.float32)),
                image_sizes=torch.tensor([list(s) for s in image_sizes], dtype=torch.int64))
        feats = getattr(out, "pooler_output", None)
        if feats is None:  # transformers releases that return (features, lengths)
            feats = out[0]
        return [f.float().numpy() for f in feats]


# ---- decoder ---------------------------------------------------------------------------------
class TorchDecoder(StepDecoder):
    """HF LlamaModel + lm_head on `inputs_embeds` where the image positions hold the prompt-table
    rows: the lookup done outside any graph."""

    name = NAME

    def __init__(self, engine: EngineDir, threads: int = 0):
        from models.random_language import language_parts

        if engine.decoder.random_weights:
            raise UserError("--backend torch needs checkpoint weights; this engine was built with --random-weights")
        self.language, self.head = language_parts(_model(engine))
        self.sec = engine.decoder
        self.cache = None

    def start(self, batch: int) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()

    def _embeds(self, ids, table, tasks, prompt_vocab_size):
        vocab = self.sec.vocab_size
        is_prompt = ids >= vocab
        emb = self.language.embed_tokens(torch.where(is_prompt, 0, ids))
        rows = ids - vocab + tasks[:, None] * prompt_vocab_size
        emb[is_prompt] = table[rows[is_prompt]].to(emb.dtype)
        return emb

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        T = Tensors
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        with torch.no_grad():
            emb = self._embeds(t[T.INPUT_IDS], t[T.PROMPT_TABLE].float(), t[T.TASKS], int(t[T.PROMPT_VOCAB_SIZE][0]))
            out = self.language(inputs_embeds=emb, attention_mask=t[T.ATTENTION_MASK], position_ids=t[T.POSITION_IDS],
                                past_key_values=self.cache, use_cache=True)
            self.cache = out.past_key_values
            return self.head(out.last_hidden_state[:, -1]).float().numpy()


def preflight(engine: EngineDir) -> None:
    """The checkpoint is loaded (and checked) by the parts themselves."""


def files(engine: EngineDir) -> dict[str, list[str]]:
    """The reference reads the checkpoint the directory was built from, none of its graphs."""
    return {"vision": [], "text": [], "decoder": []}


def vision(engine: EngineDir, threads: int = 0) -> TorchVision:
    return TorchVision(engine, threads)


def decoder(engine: EngineDir, threads: int = 0) -> TorchDecoder:
    return TorchDecoder(engine, threads)


def text(engine: EngineDir, threads: int = 0) -> TorchText:
    return TorchText(engine, threads)

