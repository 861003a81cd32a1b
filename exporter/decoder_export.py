"""Export hook for the language model: ONNX with KV cache and the TensorRT-LLM prompt table.

`exporter.build` calls `export_decoder` and then `build_decoder_engine`; the returned dict is the
`decoder` section of config.json, which is everything the runtime needs to drive the graph (or a
TensorRT-LLM engine built with the same limits) without the checkpoint.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from runtime.contract import RANDOM_WEIGHTS, DecoderSection, Files, TensorSpec, TokenIds
from runtime.contract import Tensors as T
from runtime.errors import UserError

from .decoder_graph import KV_CACHES, DecoderShape, build_decoder_onnx
from .quantize import QuantSpec

DEFAULT_MAX_INPUT_LEN = 1024  # tokens incl. the K image positions: 576 + a long prompt fits
DEFAULT_MAX_OUTPUT_LEN = 256
ONNX_NAME = Files.DECODER_ONNX
DATA_NAME = Files.DECODER_DATA
ENGINE_NAME = Files.DECODER_ENGINE
KV_CACHE_CONTRACTS = {
    "inplace": "past_key_values.* and present.* are one preallocated (batch, kv_heads, max_seq_len, head_dim) "
               "buffer per name, bound as both input and output; a step writes its keys and values at "
               "attention_mask length - input length",
    "concat": "present.* = past_key_values.* with the step's keys/values appended",
}


def language_model(loaded, precision: str, seed: int = 0):
    """The HF causal LM to export. Random-weight models get a shape-exact decoder built in the
    export dtype directly (models.random_language), never an fp32 copy."""
    if loaded.model is not None:
        return loaded.model
    if getattr(loaded, "language", None) is not None:
        return loaded.language
    from models.random_language import build_random_language

    dtype = torch.float16 if precision == "fp16" else torch.float32
    return build_random_language(loaded.config.text_config, dtype=dtype, seed=seed)


def _shape(text_config, precision: str) -> DecoderShape:
    heads = text_config.num_attention_heads
    hidden = text_config.hidden_size
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    return DecoderShape(
        vocab_size=text_config.vocab_size, hidden=hidden, layers=text_config.num_hidden_layers,
        heads=heads, kv_heads=getattr(text_config, "num_key_value_heads", None) or heads,
        head_dim=head_dim, eps=float(text_config.rms_norm_eps),
        dtype="float16" if precision == "fp16" else "float32",
    )


def profiles(section: DecoderSection) -> list[dict[str, tuple]]:
    """Profile 0 = prefill (empty past), profile 1 = single-token decode (past >= 1)."""
    b, k, h = section.max_batch, section.visual_tokens, section.hidden_size
    kv, d = section.num_kv_heads, section.head_dim
    s_max, t_max = section.max_input_len, section.max_seq_len
    rows = max(1, b * k)
    ob = 1
    inplace = section.kv_cache == "inplace"  # the cache is always (B, kv, max_seq, d)

    def common(seq, total, past, table):
        shapes = {
            T.INPUT_IDS: tuple((x, y) for x, y in seq),
            T.POSITION_IDS: tuple((x, y) for x, y in seq),
            T.ATTENTION_MASK: tuple((x, y) for x, y in total),
            T.PROMPT_TABLE: tuple((r, h) for r in table),
            T.TASKS: ((1,), (ob,), (b,)),
            T.PROMPT_VOCAB_SIZE: ((1,), (1,), (1,)),
        }
        for name, _ in T.kv_pairs(section.num_layers):
            shapes[name] = tuple((x, kv, t_max if inplace else p, d) for x, p in past)
        return shapes

    opt_s = min(s_max, k + 64)
    prefill = common(((1, 1), (ob, opt_s), (b, s_max)), ((1, 1), (ob, opt_s), (b, s_max)),
                     ((1, 0), (ob, 0), (b, 0)), (1, min(rows, ob * k) or 1, rows))
    decode = common(((1, 1), (ob, 1), (b, 1)), ((1, 2), (ob, opt_s + 32), (b, t_max)),
                    ((1, 1), (ob, opt_s + 31), (b, t_max - 1)), (1, 1, rows))
    return [prefill, decode]


def export_decoder(loaded, workdir: Path, *, precision: str, max_batch: int, max_input_len: int,
                   max_output_len: int, visual_tokens: int, seed: int = 0, progress: bool = True,
                   kv_cache: str = "inplace", quant: QuantSpec | None = None,
                   calibration: list[torch.Tensor] | None = None, partial_int4_blocks: bool = False) -> dict:
    """Write decoder.onnx (+ decoder.onnx.data) into workdir and return the config.json section.
    `quant`: weight-only int8/int4 (None or scheme none: fp weights); `calibration`: AWQ's input
    embedding sequences (exporter.calibration), required when quant.calibration is awq.
    `partial_int4_blocks`: allow an input dimension that the int4 group does not divide (a shorter
    last block: ONNX Runtime runs it, TensorRT's parser rejects it)."""
    quant = quant or QuantSpec()
    if kv_cache not in KV_CACHES:
        raise UserError(f"--kv-cache must be one of {', '.join(KV_CACHES)}, got {kv_cache!r}")
    if quant.calibration == "awq" and quant.enabled and not calibration:
        raise UserError("--calibration awq needs calibration data: pass --calib-images DIR")
    if precision not in ("fp16", "fp32"):
        raise UserError(f"precision must be fp16 or fp32, got {precision!r}")
    if max_input_len <= visual_tokens:
        raise UserError(f"--max-input-len {max_input_len} must exceed the {visual_tokens} image tokens")
    if max_output_len < 1 or max_batch < 1:
        raise UserError("--max-output-len and --max-batch must be >= 1")
    text_config = loaded.config.text_config
    if getattr(text_config, "model_type", "llama") not in ("llama", "mistral"):
        raise UserError(f"decoder export supports LLaMA-family language models, not {text_config.model_type!r}")
    shape = _shape(text_config, precision)
    from models.random_language import LazyRandomLanguage, language_parts

    lazy = None  # random weights: drawn part by part while they stream out, never the whole model
    if loaded.model is None and getattr(loaded, "language", None) is None:
        lazy = LazyRandomLanguage(text_config, torch.float16 if precision == "fp16" else torch.float32, seed)
        model = lazy.model
    else:
        model = language_model(loaded, precision, seed)
    language, head = language_parts(model)
    if any(getattr(m, "bias", None) is not None for m in language.layers[0].modules()
           if isinstance(m, torch.nn.Linear)):
        raise UserError("decoder export supports bias-free LLaMA projections only")
    rotary = language.rotary_emb
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    if not partial_int4_blocks:
        _check_group_size(shape, text_config, quant)
    awq_reports: list[dict] = []
    feeder = None
    if quant.enabled and quant.calibration == "awq":
        from .calibration import LayerFeeder

        feeder = LayerFeeder(language, calibration)

    def layer(i: int) -> dict[str, torch.Tensor]:
        if lazy is not None:
            lazy.release(language.layers[i - 1] if i else language.embed_tokens)
            lazy.materialize(language.layers[i])
        weights = dict(language.layers[i].named_parameters())
        if feeder is None:
            return weights
        from .awq import apply_awq

        scaled, report = apply_awq(weights, feeder.capture(i), quant, gqa=shape.kv_heads != shape.heads)
        awq_reports.append(report)
        return scaled

    steps = range(shape.layers)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="decoder.onnx", unit="layer", leave=False)
    max_seq = max_input_len + max_output_len
    def head_weight() -> torch.Tensor:
        if lazy is not None:
            lazy.release(language.layers[shape.layers - 1])
            lazy.materialize(language.norm)
            lazy.materialize(head)
        return head.weight

    if lazy is not None:
        lazy.materialize(language.embed_tokens)
        lazy.materialize(language.norm)  # ones: draws nothing from the generator
    with torch.no_grad():
        opset, ir_version = build_decoder_onnx(
            shape, language.embed_tokens.weight, layer, language.norm.weight, head_weight,
            rotary.inv_freq, float(getattr(rotary, "attention_scaling", 1.0)), workdir / ONNX_NAME, steps,
            kv_cache=kv_cache, max_seq=max_seq, quant=quant if quant.enabled else None,
            quantize_lm_head=quant.lm_head)
    dt = shape.dtype
    fp_tensors = ["embed_tokens", "norms"] + ([] if quant.lm_head else ["lm_head"])
    quant_section = quant.describe(fp_tensors)
    if awq_reports:
        from .awq import summarize

        quant_section["calibration"]["errors"] = summarize(awq_reports)
    cache_len = max_seq if kv_cache == "inplace" else -1
    config = loaded.config
    kv_shape = [-1, shape.kv_heads, cache_len, shape.head_dim]
    section = DecoderSection(
        onnx=ONNX_NAME,
        onnx_data=DATA_NAME,
        engine=None,
        precision=precision,
        dtype=dt,
        quantization=quant_section,
        kv_cache=kv_cache,
        kv_cache_contract=KV_CACHE_CONTRACTS[kv_cache],
        onnx_opset=opset,
        onnx_ir_version=ir_version,
        weights=RANDOM_WEIGHTS if loaded.model is None else "checkpoint",
        seed=seed if loaded.model is None else None,
        architecture="llama",
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=text_config.intermediate_size,
        num_layers=shape.layers,
        num_heads=shape.heads,
        num_kv_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_batch=max_batch,
        max_input_len=max_input_len,
        max_output_len=max_output_len,
        max_seq_len=max_input_len + max_output_len,
        visual_tokens=visual_tokens,
        prompt_table={
            "contract": "tensorrt-llm",
            # visual_tokens is the stride per request: the most image tokens one request can
            # have (LLaVA-1.5: K; LLaVA-NeXT: the widest layout). A request uses only its own count.
            "fake_ids": "vocab_size + request * visual_tokens + j for j < the request's own image token count",
            "unused_rows": "table rows of a request past its own count are zeros",
            "tasks": "zeros",
            "lookup": "id > vocab_size - 1 -> table[id - vocab_size + task * prompt_vocab_size]",
            "prompt_vocab_size": visual_tokens,
            "max_prompt_embedding_table_size": max_batch * visual_tokens,
        },
        tokens=TokenIds(
            image_token_id=getattr(config, "image_token_index", None),
            bos_token_id=getattr(text_config, "bos_token_id", None),
            eos_token_id=getattr(text_config, "eos_token_id", None),
            pad_token_id=getattr(config, "pad_token_id", None) or getattr(text_config, "pad_token_id", None),
        ),
        inputs=[
            TensorSpec(T.INPUT_IDS, [-1, -1], "int64"),
            TensorSpec(T.PROMPT_TABLE, [-1, shape.hidden], dt),
            TensorSpec(T.TASKS, [-1], "int64"),
            TensorSpec(T.PROMPT_VOCAB_SIZE, [1], "int64"),
            TensorSpec(T.POSITION_IDS, [-1, -1], "int64"),
            TensorSpec(T.ATTENTION_MASK, [-1, -1], "int64"),
        ] + [TensorSpec(past, kv_shape, dt) for past, _ in T.kv_pairs(shape.layers)],
        outputs=[TensorSpec(T.LOGITS, [-1, shape.vocab_size], "float32")]
        + [TensorSpec(present, kv_shape, dt) for _, present in T.kv_pairs(shape.layers)],
        profiles=[],
    )
    return replace(section, profiles=[{n: [list(s) for s in v] for n, v in p.items()} for p in profiles(section)])


def _check_group_size(shape: DecoderShape, text_config, quant: QuantSpec) -> None:
    """int4 blocks must tile every quantized input dimension for TensorRT ("The quantization axis
    must divide into whole blocks", checked with TensorRT-RTX's parser)."""
    if quant.scheme != "int4":
        return
    dims = {"hidden_size": shape.hidden, "intermediate_size": text_config.intermediate_size,
            "heads * head_dim": shape.heads * shape.head_dim}
    bad = {k: v for k, v in dims.items() if v % quant.group_size}
    if bad:
        raise UserError(f"--group-size {quant.group_size} does not divide the model's "
                        + ", ".join(f"{k} {v}" for k, v in bad.items()) + ", and TensorRT needs whole blocks: use another "
                        "--group-size, --quantize int8, or --backend onnx (ONNX Runtime takes a shorter last block)")


def build_decoder_engine(backend, workdir: Path, section: DecoderSection, *,
                         timing_cache: Path | None) -> DecoderSection:
    """Build decoder.engine from decoder.onnx with the prefill and decode profiles."""
    from .trt_compat import build_engine

    workdir = Path(workdir)
    info = build_engine(backend, workdir / section.onnx, workdir / ENGINE_NAME,
                        profiles=profiles(section), timing_cache=timing_cache, label="decoder")
    return replace(section, engine=ENGINE_NAME, engine_info=info)
