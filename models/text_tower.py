"""Where HiPrune++ gets its CLIP embedding space. LLaVA checkpoints keep only the CLIP vision
tower, so the text tower and the vision-side projection come from the matching CLIP
checkpoint: `--text-tower`, else a `clip/` folder inside the checkpoint (the tiny model has
one), else the HF cache copy of the CLIP the model was trained with."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from runtime.contract import RANDOM_WEIGHTS

from .loading import CheckpointError, LoadedModel, ModelNotFound

DEFAULT_CLIP = "openai/clip-vit-large-patch14-336"


def resolve_text_tower(loaded: LoadedModel, override: str | None = None) -> Path:
    candidates: list[str] = [override] if override else []
    if not override:
        if loaded.path is not None:
            candidates.append(str(loaded.path / "clip"))
        candidates.append(DEFAULT_CLIP)
    from huggingface_hub import snapshot_download

    for name in candidates:
        local = Path(name).expanduser()
        if local.is_dir():
            if not (local / "config.json").is_file():
                raise CheckpointError(f"text tower {local} has no config.json")
            return local
        if name.count("/") == 1 and not name.startswith((".", "/", "~")):
            try:
                return Path(snapshot_download(name, local_files_only=True))
            except Exception:
                continue
    wanted = override or DEFAULT_CLIP
    raise ModelNotFound(
        f"hiprune++ needs the CLIP text tower, and {wanted} is neither a directory nor in the "
        f"local Hugging Face cache: pass --text-tower PATH|HF-ID"
    )


RANDOM_SOURCE = RANDOM_WEIGHTS  # text.source of a random-weight build
RANDOM_TEXT_SEED = 2  # offset from the model seed; the visual projection uses 1


def _quiet_from_pretrained(cls, path, **kwargs):
    """from_pretrained without the load report and progress bar: loading a CLIPModel checkpoint
    into its text half lists every vision weight as unexpected, which is the point."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return cls.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load CLIP text tower {path}: {first}") from None
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def text_tower_from_path(path: str | Path) -> torch.nn.Module:
    """The `CLIPTextModelWithProjection` stored at `path`, which may be a whole CLIPModel
    checkpoint (only its text half and `text_projection` are read). A CLIPModel keeps the
    projection width at the top level, so the text config is given it explicitly."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModelWithProjection

    path = Path(path)
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {exc}") from None
    if model_type == "clip":
        full = CLIPConfig.from_pretrained(path, local_files_only=True)
        config = full.text_config
        config.projection_dim = full.projection_dim
    elif model_type == "clip_text_model":
        config = CLIPTextConfig.from_pretrained(path, local_files_only=True)
    else:
        raise CheckpointError(f"text tower {path} holds a {model_type!r} model, not a CLIP model")
    return _quiet_from_pretrained(CLIPTextModelWithProjection, path, config=config).float().eval()


def random_text_tower(tokenizer, seed: int = 0) -> torch.nn.Module:
    """A ViT-L/14-336-shaped CLIP text tower with random weights (for `--random-weights`
    builds, which have no CLIP checkpoint). Its special ids are the tokenizer's, so HF picks
    the same EOS pooling rule it would for that vocabulary; weights depend only on `seed`."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + RANDOM_TEXT_SEED)
        return CLIPTextModelWithProjection(config).eval()


def load_visual_projection(loaded: LoadedModel, override: str | None = None, seed: int = 0) -> torch.nn.Linear:
    """The CLIP `visual_projection` (vision hidden -> joint embedding space), from the same
    checkpoint `resolve_text_tower` gives the text tower, so image and prompt embeddings share
    one space."""
    if loaded.source == RANDOM_WEIGHTS and override is None:
        vc = loaded.config.vision_config
        with torch.random.fork_rng(devices=[]):  # deterministic whatever ran before
            torch.manual_seed(seed + 1)
            return torch.nn.Linear(vc.hidden_size, vc.projection_dim, bias=False).eval()
    path = resolve_text_tower(loaded, override)
    projection = visual_projection_from_path(path)
    if projection.in_features != loaded.config.vision_config.hidden_size:
        raise CheckpointError(
            f"text tower {path} projects {projection.in_features}-wide vision features, "
            f"but the model's vision tower is {loaded.config.vision_config.hidden_size} wide"
        )
    return projection


def visual_projection_from_path(path: str | Path) -> torch.nn.Linear:
    """`visual_projection` of the CLIPModel at `path` (a text-only checkpoint has none)."""
    from transformers import CLIPModel

    path = Path(path)
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        model_type = None
    if model_type != "clip":
        raise CheckpointError(f"text tower {path} is not a full CLIP checkpoint: hiprune++ also needs its "
                              "visual_projection")
    return _quiet_from_pretrained(CLIPModel, path).visual_projection.float().eval()
