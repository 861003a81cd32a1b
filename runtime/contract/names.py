"""Every name the exporter and the runtime must agree on: the format version, the files of an
engine directory and the graphs' tensor names. Defined once here; nothing else spells them."""
from __future__ import annotations

FORMAT = "edgeprune-engine-dir"
# Version 2: typed sections, artifacts with size and sha256, processor/ always present.
FORMAT_VERSION = 2
# The one reading rule: a reader accepts OLDEST_READABLE <= format_version <= FORMAT_VERSION;
# newer directories ask for an upgrade, older ones for a rebuild.
OLDEST_READABLE = 2

CONFIG_FILE = "config.json"
# model.source / decoder.weights / text.source of a shape-exact random-weight build
RANDOM_WEIGHTS = "random-weights"
# TensorRT DataType names -> numpy dtype names (both TensorRT flavours)
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
              "INT8": "int8", "UINT8": "uint8", "BOOL": "bool", "INT4": "int4", "FP8": "float8"}


class Files:
    """Artifact names inside an engine directory."""

    VISION_ONNX = "vision.onnx"
    VISION_PLUGIN_ONNX = "vision_plugin.onnx"
    VISION_ENGINE = "vision.engine"
    TEXT_ONNX = "text.onnx"
    TEXT_ENGINE = "text.engine"
    TEXT_TOKENIZER = "text_tokenizer"
    DECODER_ONNX = "decoder.onnx"
    DECODER_DATA = "decoder.onnx.data"
    DECODER_ENGINE = "decoder.engine"
    PROCESSOR = "processor"
    IMAGE_NEWLINE = "image_newline.npy"
    TIMING_CACHE = "timing.cache"


class Tensors:
    """Graph input and output names (vision graph, CLIP text tower, decoder)."""

    # vision graph
    PIXEL_VALUES = "pixel_values"
    TEXT_EMBEDS = "text_embeds"  # also the text tower's output
    VIEW_BUDGET = "view_budget"
    VISUAL_FEATURES = "visual_features"
    KEPT_INDICES = "kept_indices"
    LAYER_SCORES = "layer_scores"  # --debug-scores: column-mean layer scores (HIVTP, HiPrune)
    CLS_SCORES = "cls_scores"  # --debug-scores: the layer-23 CLS row (SCOPE, VisionZip)
    TOKEN_ASSIGNMENT = "token_assignment"  # --debug-scores: VisionZip's contextual slot of every patch
    # CLIP text tower
    TEXT_INPUT_IDS = "input_ids"
    # decoder (TensorRT-LLM prompt-table contract)
    INPUT_IDS = "input_ids"
    PROMPT_TABLE = "prompt_embedding_table"
    TASKS = "tasks"
    PROMPT_VOCAB_SIZE = "prompt_vocab_size"
    POSITION_IDS = "position_ids"
    ATTENTION_MASK = "attention_mask"
    LOGITS = "logits"
    PAST_PREFIX = "past_key_values"
    PRESENT_PREFIX = "present"

    @staticmethod
    def past(layer: int, kind: str) -> str:
        return f"{Tensors.PAST_PREFIX}.{layer}.{kind}"

    @staticmethod
    def present(layer: int, kind: str) -> str:
        return f"{Tensors.PRESENT_PREFIX}.{layer}.{kind}"

    @staticmethod
    def kv_pairs(layers: int) -> list[tuple[str, str]]:
        """(past input, present output) for every layer's key and value, in graph order."""
        return [(Tensors.past(i, kv), Tensors.present(i, kv)) for i in range(layers) for kv in ("key", "value")]

    @staticmethod
    def is_kv_cache(name: str) -> bool:
        return name.startswith((Tensors.PAST_PREFIX + ".", Tensors.PRESENT_PREFIX + "."))
