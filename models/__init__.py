"""Model sources for edgeprune: the built-in tiny model, shape-exact random-weight models from
MODELS.md, and real checkpoints from a local directory or the Hugging Face cache."""
from .loading import LoadedModel, ModelNotFound, load_model
from .parts import VisionParts, clip_core, vision_parts
from .specs import ALIASES, SPECS, spec_for
from .tiny import TINY_NAME, TINY_NEXT_NAME, ensure_tiny_checkpoint

__all__ = [
    "ALIASES", "SPECS", "TINY_NAME", "TINY_NEXT_NAME", "LoadedModel", "ModelNotFound", "VisionParts", "clip_core",
    "ensure_tiny_checkpoint", "load_model", "spec_for", "vision_parts",
]
