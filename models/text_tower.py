"""Where HiPrune++ gets its CLIP embedding space. LLaVA checkpoints keep only the CLIP vision
tower, so the text tower and the vision-side projection come from the matching CLIP
checkpoint: `--text-tower`, else a `clip/` folder inside the checkpoint (the tiny model has
one), else the HF cache copy of the CLIP the model was trained with."""
from __future__ import annotations

from pathlib import Path

import torch

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


def load_visual_projection(loaded: LoadedModel, override: str | None = None, seed: int = 0) -> torch.nn.Linear:
    """The CLIP `visual_projection` (vision hidden -> joint embedding space)."""
    if loaded.source == "random-weights" and override is None:
        vc = loaded.config.vision_config
        torch.manual_seed(seed + 1)
        return torch.nn.Linear(vc.hidden_size, vc.projection_dim, bias=False).eval()
    path = resolve_text_tower(loaded, override)
    from transformers import CLIPModel

    try:
        clip = CLIPModel.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load CLIP text tower {path}: {first}") from None
    projection = clip.visual_projection.eval()
    if projection.in_features != loaded.config.vision_config.hidden_size:
        raise CheckpointError(
            f"text tower {path} projects {projection.in_features}-wide vision features, "
            f"but the model's vision tower is {loaded.config.vision_config.hidden_size} wide"
        )
    return projection
