"""The engine-directory contract between the exporter and the runtime: format version and
reading rule, file names, tensor names and the typed config.json sections. Imports nothing
heavy (standard library only), so the runtime on a device and the exporter on a host share it."""
from .engine_dir import (
    EngineDir,
    artifact_records,
    check_format,
    inside,
    is_engine_dir,
    open_engine_dir,
    read_config,
    sha256_file,
    write_config,
)
from .names import CONFIG_FILE, FORMAT, FORMAT_VERSION, OLDEST_READABLE, RANDOM_WEIGHTS, TRT_DTYPES, Files, Tensors
from .schema import SchemaError, parse, to_json
from .sections import (
    AnyresSection,
    Artifact,
    DecoderSection,
    EngineConfig,
    EngineSection,
    KV_CACHES,
    LayoutSpec,
    ModelSection,
    PluginBranch,
    PluginSection,
    PreprocessSection,
    PruningSection,
    TensorSpec,
    TextSection,
    TokenIds,
    VisionSection,
    ViewBudget,
    tensor,
)

__all__ = [
    "CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "OLDEST_READABLE", "RANDOM_WEIGHTS", "TRT_DTYPES", "AnyresSection", "Artifact", "DecoderSection",
    "EngineConfig", "EngineDir", "EngineSection", "Files", "KV_CACHES", "LayoutSpec", "ModelSection", "PluginBranch",
    "PluginSection", "PreprocessSection", "PruningSection", "SchemaError", "TensorSpec", "Tensors", "TextSection",
    "TokenIds", "ViewBudget", "VisionSection", "artifact_records", "check_format", "inside", "is_engine_dir",
    "open_engine_dir", "parse", "read_config", "sha256_file", "tensor", "to_json", "write_config",
]
