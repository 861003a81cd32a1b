"""The typed sections of config.json. The exporter builds these records and writes them; the
runtime, `inspect` and the scripts read them back through `EngineConfig.parse`. A field is
spelled only here (and in the JSON the records produce)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .names import RANDOM_WEIGHTS, Tensors
from .schema import SchemaError


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: -1 marks a dynamic axis."""

    name: str
    shape: list[int]
    dtype: str


def tensor(specs: list[TensorSpec], name: str) -> TensorSpec | None:
    return next((t for t in specs if t.name == name), None)


@dataclass(frozen=True)
class ModelSection:
    name: str
    source: str  # builtin | local | hf-cache | random-weights
    path: str | None
    architecture: str
    model_type: str
    vision_layers: int
    vision_hidden: int
    llm_hidden: int
    image_size: int
    patch_size: int
    vision_feature_layer: int
    image_grid_pinpoints: list[list[int]] | None = None


@dataclass(frozen=True)
class PruningSection:
    """The method, K, every parameter and the derived constants (exporter.pruning.PruneConfig)."""

    method: str
    keep: int | None
    grid: list[int]
    num_layers: int
    params: dict[str, Any]
    score_layers: list[int]
    output_tokens: int | None
    derived: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreprocessSection:
    image_size: int
    mean: list[float]
    std: list[float]
    processor: str  # folder with the checkpoint's processor, tokenizer and chat template


@dataclass(frozen=True)
class LayoutSpec:
    pinpoint: list[int]
    rows: int
    cols: int
    views: int


@dataclass(frozen=True)
class ViewBudget:
    views: list[int]  # view counts (per image) that use this branch
    keep: int  # K_view
    output: int  # tokens per view the branch outputs
    dominant_patches: int | None = None  # VisionZip: Kd dominant patches (rows 1..Kd after the CLS row)
    contextual: int | None = None  # VisionZip: C contextual tokens (the last C rows)


MERGES = ("spatial", "spatial_unpad", "visionzip")
KV_CACHES = ("inplace", "concat")


@dataclass(frozen=True)
class AnyresSection:
    """LLaVA-NeXT: how images become views and views become each image's tokens."""

    image_grid_pinpoints: list[list[int]]
    view_size: int
    patch_grid: list[int]
    layouts: list[LayoutSpec]
    max_views: int
    keep_per_image: int | None
    view_rule: str
    view_budgets: list[ViewBudget]
    merge: str
    image_newline: str | None
    order: str
    max_tokens_per_image: int

    def validate(self, where: str) -> None:
        if self.merge not in MERGES:
            raise SchemaError(f"{where}.merge is {self.merge!r}; this runtime knows {', '.join(MERGES)}")
        if self.merge == "spatial" and not self.view_budgets:
            raise SchemaError(f"{where} has no view_budgets for a pruned engine: rebuild it")


@dataclass(frozen=True)
class PluginBranch:
    views: list[int]
    keep: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class PluginSection:
    library: str
    fields: dict[str, Any]
    branches: list[PluginBranch] | None = None


@dataclass(frozen=True)
class VisionSection:
    onnx: str
    onnx_files: list[str]
    engine: str | None
    selector: str  # plugin | onnx
    selector_reason: str
    pruning: PruningSection
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocess: PreprocessSection
    anyres: AnyresSection | None = None
    plugin_onnx: str | None = None
    plugin: PluginSection | None = None
    engine_io: list[dict[str, Any]] | None = None
    engine_profiles: list[dict[str, Any]] | None = None

    def validate(self, where: str) -> None:
        """K in the pruning record must be what the graph declares it outputs."""
        kept = tensor(self.outputs, Tensors.KEPT_INDICES)
        k = self.pruning.output_tokens
        if self.anyres is None and kept is not None and k is not None and kept.shape[1:] != [k]:
            raise SchemaError(f"{where}.pruning.output_tokens is {k} but {where}.outputs declares "
                              f"{Tensors.KEPT_INDICES} {kept.shape}")


@dataclass(frozen=True)
class TextSection:
    """HiPrune++'s CLIP text tower (text.onnx, text.engine, its tokenizer folder)."""

    onnx: str
    engine: str | None
    tokenizer: str
    source: str
    precision: str
    build_precision: str
    context_length: int
    chunk_tokens: int
    max_chunks: int
    chunking: str
    pooling: str
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    embed_dim: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    seed: int | None = None
    engine_io: list[dict[str, Any]] | None = None
    engine_profiles: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class TokenIds:
    image_token_id: int | None
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None


@dataclass(frozen=True)
class DecoderSection:
    """The language model graph and everything needed to drive it (or a TensorRT-LLM engine built
    with the same limits) through the prompt-table contract."""

    onnx: str
    onnx_data: str
    engine: str | None
    precision: str
    dtype: str
    weights: str  # checkpoint | random-weights
    seed: int | None
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_batch: int
    max_input_len: int
    max_output_len: int
    max_seq_len: int
    visual_tokens: int  # prompt-table rows per request (LLaVA-NeXT: the most an image can take)
    prompt_table: dict[str, Any]
    tokens: TokenIds
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    profiles: list[dict[str, Any]]
    engine_info: dict[str, Any] | None = None
    # weight-only quantization (exporter.quantize.QuantSpec.describe); {"scheme": "none"} for fp weights
    quantization: dict[str, Any] = field(default_factory=lambda: {"scheme": "none"})
    kv_cache: str = "concat"  # concat | inplace (runtime/kv_cache.py)
    kv_cache_contract: str = ""
    onnx_opset: int = 17
    onnx_ir_version: int = 8
    intermediate_size: int | None = None

    def validate(self, where: str) -> None:
        for name in ("vocab_size", "num_layers", "num_kv_heads", "head_dim", "max_batch", "max_output_len",
                     "visual_tokens"):
            if getattr(self, name) < 1:
                raise SchemaError(f"{where}.{name} must be at least 1, got {getattr(self, name)}")
        if self.kv_cache not in KV_CACHES:
            raise SchemaError(f"{where}.kv_cache is {self.kv_cache!r}; this runtime knows {', '.join(KV_CACHES)}")
        if self.max_input_len <= self.visual_tokens:
            raise SchemaError(f"{where}.max_input_len {self.max_input_len} must exceed visual_tokens "
                              f"{self.visual_tokens}")

    @property
    def random_weights(self) -> bool:
        return self.weights == RANDOM_WEIGHTS


@dataclass(frozen=True)
class EngineSection:
    """Which TensorRT flavour built the engines (if any) and for what hardware."""

    backend: str | None  # tensorrt | tensorrt-rtx
    version: str | None
    built: bool
    reason: str | None
    compute_capability: str | None = None
    hardware_compatible: bool = False


@dataclass(frozen=True)
class Artifact:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class EngineConfig:
    """The whole config.json."""

    format: str
    format_version: int
    model: ModelSection
    precision: str
    max_batch: int
    vision: VisionSection
    engine: EngineSection
    artifacts: dict[str, Artifact]
    text: TextSection | None = None
    decoder: DecoderSection | None = None
    command: str = ""
    versions: dict[str, Any] = field(default_factory=dict)
    build_seconds: float = 0.0
