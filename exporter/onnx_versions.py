"""The ONNX opset and IR versions of every exported graph, in one place. Each graph gets the
lowest pair that holds its operators, so it stays parseable by the oldest TensorRT that can run
it (newer onnx releases would otherwise stamp a newer IR version that older runtimes reject)."""
from __future__ import annotations

# opset 17 (LayerNormalization) with IR 8: what ONNX Runtime, TensorRT 10.3's parser (JetPack
# 6.1/6.2) and TensorRT-RTX all accept: the vision graph, the CLIP text tower, fp decoders.
BASE = (17, 8)
# DequantizeLinear's block_size and the INT4 type (TensorRT >= 10.0 parses them).
QUANTIZED = (21, 10)
# TensorScatter, which TensorRT >= 10.15 and TensorRT-RTX map to their KV-cache update layer and
# ONNX Runtime runs in place.
INPLACE_KV = (24, 11)


def decoder_versions(kv_cache: str, quantized: bool) -> tuple[int, int]:
    """(opset, IR version) of a decoder graph."""
    if kv_cache == "inplace":
        return INPLACE_KV
    return QUANTIZED if quantized else BASE
