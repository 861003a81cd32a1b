"""Turn a MODEL argument into loaded weights: built-in tiny model, alias, Hugging Face id (local
cache only: these machines have no hub access), local checkpoint directory, or a shape-exact
random-weight model."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.contract import RANDOM_WEIGHTS, ModelSection

from .parts import VisionParts, vision_parts
from .specs import SPECS, llava_config, spec_for
from .tiny import TINY_VERSIONS, ensure_tiny_checkpoint

SUPPORTED_MODEL_TYPES = ("llava", "llava_next")
ARCHITECTURES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}


class ModelNotFound(ValueError):
    """The MODEL argument names nothing that can be loaded here."""


class CheckpointError(ValueError):
    """The checkpoint exists but cannot be read or is not a supported architecture."""


@dataclass
class LoadedModel:
    name: str
    source: str  # builtin | local | hf-cache | random-weights
    path: Path | None
    config: Any
    vision: VisionParts
    model: torch.nn.Module | None = None  # the full Llava(Next)ForConditionalGeneration when loaded
    processor: Any | None = None
    image_newline: torch.Tensor | None = None  # LLaVA-NeXT's learned row separator (stock path)
    processor_error: str | None = None  # why the checkpoint's processor could not be loaded

    @property
    def architecture(self) -> str:
        return ARCHITECTURES.get(self.config.model_type, "LlavaForConditionalGeneration")

    @property
    def anyres(self) -> bool:
        from .anyres import is_anyres

        return is_anyres(self.config)

    def describe(self) -> ModelSection:
        """config.json's `model` record."""
        return ModelSection(
            name=self.name,
            source=self.source,
            path=str(self.path) if self.path else None,
            architecture=self.architecture,
            model_type=self.config.model_type,
            vision_layers=self.config.vision_config.num_hidden_layers,
            vision_hidden=self.config.vision_config.hidden_size,
            llm_hidden=self.config.text_config.hidden_size,
            image_size=self.config.vision_config.image_size,
            patch_size=self.config.vision_config.patch_size,
            vision_feature_layer=self.config.vision_feature_layer,
            image_grid_pinpoints=[list(p) for p in getattr(self.config, "image_grid_pinpoints", None) or []]
            if self.anyres else None,
        )


def _resolve_checkpoint(name: str) -> tuple[Path, str]:
    if name in TINY_VERSIONS:
        return ensure_tiny_checkpoint(name), "builtin"
    local = Path(name).expanduser()
    if local.is_dir():
        return local, "local"
    if local.exists():
        raise CheckpointError(f"model path {name} is a file, not a checkpoint directory")
    spec = spec_for(name)
    repo_id = spec.hf_id if spec else name
    if spec is None and (name.count("/") != 1 or name.startswith((".", "/", "~"))):
        known = ", ".join([*TINY_VERSIONS, *SPECS])
        raise ModelNotFound(
            f"unknown model {name!r}: use one of {known}, a Hugging Face id, or a checkpoint directory"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True)), "hf-cache"
    except Exception:
        hint = " (or pass --random-weights for a shape-exact random model)" if spec else ""
        raise ModelNotFound(
            f"model {repo_id} is not in the local Hugging Face cache; download it first with "
            f"`hf download {repo_id}` or pass a checkpoint directory{hint}"
        ) from None


def _read_checkpoint(path: Path, name: str, source: str) -> LoadedModel:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {cfg_file}: {exc}") from None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{path} holds a {model_type!r} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    import transformers
    from transformers import AutoProcessor

    model_class = getattr(transformers, ARCHITECTURES[model_type])
    try:
        model = model_class.from_pretrained(
            path, dtype="auto", local_files_only=True
        ).eval()
    except Exception as exc:  # corrupt or partial weights: one line, no traceback upstream
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first}") from None
    processor, processor_error = None, None
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # the build refuses the checkpoint with this reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        processor_error = f"cannot load the processor of {path}: {first}"
    newline = getattr(getattr(model, "model", model), "image_newline", None)
    newline = newline.detach() if newline is not None else None
    return LoadedModel(name, source, path, model.config, vision_parts(model), model, processor, newline,
                       processor_error=processor_error)


def _random_vision(name: str, seed: int) -> LoadedModel:
    from transformers import CLIPVisionModel
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
    from transformers.models.llava_next.modeling_llava_next import LlavaNextMultiModalProjector

    spec = spec_for(name)
    if spec is None:
        known = ", ".join(SPECS)
        raise ModelNotFound(f"--random-weights needs a model with known shapes ({known}), got {name!r}")
    config = llava_config(spec)
    torch.manual_seed(seed)
    tower = CLIPVisionModel(config.vision_config).eval()
    next_model = spec.architecture == "LlavaNextForConditionalGeneration"
    projector = (LlavaNextMultiModalProjector if next_model else LlavaMultiModalProjector)(config).eval()
    newline = None
    if next_model:  # LLaVA-NeXT's init: randn / sqrt(hidden)
        hidden = config.text_config.hidden_size
        newline = torch.randn(hidden) / hidden**0.5
    return LoadedModel(spec.alias, RANDOM_WEIGHTS, None, config, VisionParts(tower, projector, config),
                       image_newline=newline)


def load_model(name: str, *, random_weights: bool = False, seed: int = 0) -> LoadedModel:
    """Load MODEL. With random_weights, only the vision tower and projector are built (the
    decoder of a 7B model would not fit a CPU machine in fp32)."""
    if random_weights and name not in TINY_VERSIONS:
        return _random_vision(name, seed)
    path, source = _resolve_checkpoint(name)
    return _read_checkpoint(path, name, source)
