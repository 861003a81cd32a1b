"""Time to first token of the 7B shape with PyTorch on a GPU: our exported vision module and the
HF LLaMA decoder, random weights (nothing to download on the lent machine).

The vision module is exactly what the exporter traces into vision.onnx
(`exporter.onnx_export.build_graph_module`: CLIP to the feature layer, the method's in-graph
scores, the selection, the gather and the projector on the kept rows), run eagerly. The decoder is
`LlamaForCausalLM` with the checkpoint's text config, prefilling `inputs_embeds` = text-prefix
embeddings + the vision module's K rows + text-suffix embeddings (60 text tokens in all).
TTFT = vision + prefill + the first argmax, timed together; its ratio to the 576-token path is the
issue's target (<= 0.40 at K = 128). Decode tokens/s: greedy steps with the KV cache after the
prefill. `DECODERS` holds one entry per decoder variant; the int8/int4 decoders (issue 10) add
theirs there.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

TEXT_TOKENS = 60
PREFIX_TOKENS = 5  # "USER: " before the image; the rest of the text follows it


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_hf_llama(text_config, device: torch.device, dtype: torch.dtype):
    """HF LlamaForCausalLM created directly in `dtype` (fp16 on the GPU) on `device`, HF's own random init."""
    from transformers import LlamaForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlamaForCausalLM(text_config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


DECODERS: dict[str, Callable] = {"hf": build_hf_llama}  # issue 10 adds "int8": ..., "int4": ...


def _median_time(fn, device, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(model: str = "llava-1.5-7b", device: str = "cuda", precision: str = "fp16",
            methods=("hivtp", "hiprune"), keeps=(64, 128, 192), reps: int = 20, decode_tokens: int = 32,
            decoders=("hf",), log=print) -> dict:
    from exporter.onnx_export import build_graph_module
    from exporter.pruning import make_config
    from models import load_model
    from models.text_tower import load_visual_projection

    dev = torch.device(device)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    torch.manual_seed(0)
    # the selection builds index tensors with torch.arange(n) and no device: the default device
    # must be the GPU's while the modules run (the `with dev` blocks below)
    loaded = load_model(model, random_weights=True)
    parts, config = loaded.vision, loaded.config
    size = parts.image_size
    pixels = torch.randn(1, 3, size, size, device=dev, dtype=dtype)
    configs = [make_config("none", None)] + [make_config(m, k) for m in methods for k in keeps]
    projection = load_visual_projection(loaded) if any(c.uses_prompt for c in configs) else None
    out: dict = {"model": model, "device": str(dev), "precision": precision, "text_tokens": TEXT_TOKENS,
                 "reps": reps, "vision": [], "decoders": {}}
    modules, visual = {}, {}
    with torch.no_grad(), dev:
        for cfg in configs:
            label = f"{cfg.method} K={cfg.output_count}"
            module = build_graph_module(parts, cfg, precision=precision,
                                        clip_projection=projection if cfg.uses_prompt else None).to(dev)
            args = (pixels,)
            if cfg.uses_prompt:  # a prompt embedding for HiPrune++ (random: only the cost matters here)
                args = (pixels, torch.randn(1, projection.out_features, device=dev))
            modules[label] = (module, args)
            seconds, (feats, kept) = _median_time(lambda: module(*args), dev, reps)
            visual[label] = feats
            out["vision"].append({"method": cfg.method, "keep": cfg.output_count, "vision_ms": seconds * 1e3,
                                  "kept_shape": list(kept.shape)})
            log(f"  vision {label}: {seconds * 1e3:.2f} ms")
        for name in decoders:
            llm = DECODERS[name](config.text_config, dev, dtype)
            embed = llm.get_input_embeddings()
            ids = torch.randint(10, config.text_config.vocab_size - 10, (1, TEXT_TOKENS), device=dev)
            text = embed(ids)
            rows = []
            for cfg, (label, feats) in zip(configs, visual.items()):
                module, args = modules[label]

                def ttft():
                    v, _ = module(*args)
                    emb = torch.cat([text[:, :PREFIX_TOKENS], v.to(text.dtype), text[:, PREFIX_TOKENS:]], dim=1)
                    res = llm(inputs_embeds=emb, use_cache=True, logits_to_keep=1)
                    return res.logits[:, -1].argmax(-1), res.past_key_values

                def prefill_only():
                    emb = torch.cat([text[:, :PREFIX_TOKENS], feats.to(text.dtype), text[:, PREFIX_TOKENS:]], dim=1)
                    return llm(inputs_embeds=emb, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1)

                total, (token, cache) = _median_time(ttft, dev, reps)
                prefill, _ = _median_time(prefill_only, dev, reps)
                steps = []
                for _ in range(decode_tokens):
                    start = time.perf_counter()
                    res = llm(input_ids=token[:, None], past_key_values=cache, use_cache=True)
                    token, cache = res.logits[:, -1].argmax(-1), res.past_key_values
                    _sync(dev)
                    steps.append(time.perf_counter() - start)
                row = {"method": cfg.method, "keep": cfg.output_count, "prompt_tokens": feats.shape[1] + TEXT_TOKENS,
                       "ttft_ms": total * 1e3, "prefill_ms": prefill * 1e3,
                       "decode_tokens_per_s": len(steps) / sum(steps) if steps else None}
                rows.append(row)
                log(f"  {name} {label}: TTFT {row['ttft_ms']:.2f} ms (prefill {row['prefill_ms']:.2f}), "
                    f"decode {row['decode_tokens_per_s']:.1f} tok/s")
                del cache
            base = rows[0]["ttft_ms"]
            for row in rows:
                row["ttft_ratio_to_576"] = row["ttft_ms"] / base
            out["decoders"][name] = rows
            del llm
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return out
