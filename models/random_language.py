"""Shape-exact random-weight LLaMA decoders without a float32 copy of the model.

A 7B decoder is 13.5 GB in fp16 and 27 GB in fp32, more than a 24 GiB machine holds. The
module tree is therefore created on the meta device (no storage), cast to the target dtype
there, and every parameter is then materialised on its own in that dtype, so peak memory stays
at the fp16 size plus one tensor's temporary.
"""
from __future__ import annotations

import torch


def _fill(shape: torch.Size, dtype: torch.dtype, gen: torch.Generator, std: float) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype)
    rows = max(1, (1 << 24) // max(1, shape[-1]))  # chunks of ~16M values: small fp32 temporaries
    flat = out.view(-1, shape[-1]) if len(shape) > 1 else out.view(1, -1)
    for start in range(0, flat.shape[0], rows):
        block = flat[start : start + rows]
        block.copy_(torch.randn(block.shape, generator=gen) * std)
    return out


def build_random_language(text_config, dtype: torch.dtype = torch.float16, seed: int = 0, std: float = 0.02):
    """A `LlamaForCausalLM` (`.model` = LlamaModel, `.lm_head`) with N(0, std) weights and unit
    RMSNorm weights, deterministic in `seed`. Works for any LlamaConfig-compatible text config."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device("meta"):
        model = LlamaForCausalLM(text_config).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if name == "weight" and param.dim() == 1:  # RMSNorm
                value = torch.ones(param.shape, dtype=dtype)
            else:
                value = _fill(param.shape, dtype, gen, std)
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    model.model.rotary_emb = LlamaRotaryEmbedding(text_config)  # its buffers were on meta
    model.config.use_cache = True
    return model.eval()


def language_parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(LlamaModel, lm_head) of a LlavaForConditionalGeneration or a LlamaForCausalLM."""
    inner = getattr(model, "model", model)
    language = getattr(inner, "language_model", None)
    if language is None:
        language = inner
    return language, model.lm_head


class LazyRandomLanguage:
    """The same random decoder as `build_random_language` (same seed -> bit-identical values),
    but each part is materialised only when asked for and can be released again, so exporting
    it streams: host memory holds the embeddings, one layer and the lm_head at a time instead of
    the whole model (a 7B decoder: ~1 GB instead of 13.5 GB in fp16).

    Values are drawn from one generator in `build_random_language`'s order (embeddings, layer 0,
    1, ..., final norm, lm_head), so parts must be materialised in that order."""

    def __init__(self, text_config, dtype: torch.dtype = torch.float16, seed: int = 0, std: float = 0.02):
        from transformers import LlamaForCausalLM
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        with torch.device("meta"):
            self.model = LlamaForCausalLM(text_config).to(dtype)
        self.model.model.rotary_emb = LlamaRotaryEmbedding(text_config)
        self.model.config.use_cache = True
        self.model.eval()
        self.dtype, self.std = dtype, std
        self.gen = torch.Generator().manual_seed(seed)

    def materialize(self, module: torch.nn.Module) -> torch.nn.Module:
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is None or param.device.type != "meta":
                    continue
                if name == "weight" and param.dim() == 1:
                    value = torch.ones(param.shape, dtype=self.dtype)
                else:
                    value = _fill(param.shape, self.dtype, self.gen, self.std)
                sub._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
        return module

    @staticmethod
    def release(module: torch.nn.Module) -> None:
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.device.type != "meta":
                    sub._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)
