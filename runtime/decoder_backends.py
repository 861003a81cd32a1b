"""Step-level decoder backends: our decoder graph through ONNX Runtime or TensorRT, and the
torch reference (the HF language model fed `inputs_embeds` with the same kept tokens).

Every backend implements `start(batch)` and `step(feeds) -> logits (B, vocab) float32`; the
feeds follow the prompt-table contract, so the pipeline's generation loop is the same for all.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from exporter.errors import UserError

from .engine_dir import EngineDir
from .optional import need

_NP = {"float16": np.float16, "float32": np.float32}


def _past_names(layers: int) -> list[tuple[str, str]]:
    return [(f"past_key_values.{i}.{kv}", f"present.{i}.{kv}") for i in range(layers) for kv in ("key", "value")]


# ONNX Runtime fuses DequantizeLinear + MatMul of int4 weights into MatMulNBits, which by default
# quantizes the activations to int8 (accuracy level 4): max abs error 0.45 on a 256-long dot
# product of unit Gaussians, against 1e-5 at level 0 (float activations, the graph's meaning).
ACCURATE_MATMULNBITS = "0"


class OrtDecoder:
    name = "onnxruntime"

    def __init__(self, engine: EngineDir, threads: int = 0, matmulnbits_accuracy_level: str = ACCURATE_MATMULNBITS):
        ort = need("onnxruntime", "onnxruntime")
        sec = engine.decoder
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", matmulnbits_accuracy_level)
        path = engine.file(sec.get("onnx"), "decoder ONNX file")
        self.ort = ort
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.sec, self.dtype = sec, sec["dtype"]
        self.names = _past_names(sec["num_layers"])
        self.past: dict[str, np.ndarray] = {}
        self.cache = None  # InplaceKvCache for kv_cache: inplace decoders

    def start(self, batch: int) -> None:
        if self.sec.get("kv_cache") == "inplace":
            from .kv_cache import InplaceKvCache

            arrays = []  # the OrtValues borrow these arrays' memory: keep them alive

            def allocate(shape, dtype):
                arrays.append(np.zeros(shape, _NP[dtype]))
                return self.ort.OrtValue.ortvalue_from_numpy(arrays[-1])

            self.cache = InplaceKvCache(self.sec, batch, allocate)
            self.cache.arrays = arrays
            return
        shape = (batch, self.sec["num_kv_heads"], 0, self.sec["head_dim"])
        self.past = {p: np.zeros(shape, _NP[self.dtype]) for p, _ in self.names}

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = dict(feeds, prompt_embedding_table=feeds["prompt_embedding_table"].astype(_NP[self.dtype]))
        if self.cache is not None:
            return self._step_inplace(feeds)
        outs = self.session.run(["logits"] + [pr for _, pr in self.names], {**feeds, **self.past})
        self.past = {p: o for (p, _), o in zip(self.names, outs[1:])}
        return outs[0]

    def _step_inplace(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Each past/present pair is bound to one OrtValue: TensorScatter writes the new
        positions into it and copies nothing."""
        self.cache.check(feeds)
        binding = self.session.io_binding()
        arrays = {n: np.ascontiguousarray(v) for n, v in feeds.items()}
        for name, value in arrays.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("logits")  # first bound output: copy_outputs_to_cpu()[0]
        for past, present, buffer in self.cache.pairs():
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        self.session.run_with_iobinding(binding)
        self.cache.steps += 1
        return binding.copy_outputs_to_cpu()[0]


class TrtDecoder:
    name = "tensorrt"

    def __init__(self, engine: EngineDir):
        from .trt_runner import TrtEngine

        self.sec = engine.decoder
        self.engine = TrtEngine(engine, self.sec.get("engine"), "decoder engine")
        self.names = _past_names(self.sec["num_layers"])
        self.dtype = self.sec["dtype"]
        self.cache = None

    def start(self, batch: int) -> None:
        torch = self.engine.torch
        dt = torch.float16 if self.dtype == "float16" else torch.float32
        if self.sec.get("kv_cache") == "inplace":
            from .kv_cache import InplaceKvCache

            self.cache = InplaceKvCache(self.sec, batch, lambda shape, _d: torch.zeros(shape, dtype=dt, device="cuda"))
            return
        shape = (batch, self.sec["num_kv_heads"], 0, self.sec["head_dim"])
        self.past = {p: torch.zeros(shape, dtype=dt, device="cuda") for p, _ in self.names}

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = dict(feeds, prompt_embedding_table=feeds["prompt_embedding_table"].astype(_NP[self.dtype]))
        if self.cache is not None:  # one device buffer bound as past input and present output
            self.cache.check(feeds)
            self.engine.set_profile(0 if self.cache.steps == 0 else 1)
            pairs = list(self.cache.pairs())
            out = self.engine.run({**feeds, **{p: buf for p, _, buf in pairs}}, ["logits"],
                                  aliases={pr: buf for _, pr, buf in pairs})
            self.cache.steps += 1
            return out["logits"]
        prefill = next(iter(self.past.values())).shape[2] == 0
        self.engine.set_profile(0 if prefill else 1)
        out = self.engine.run({**feeds, **self.past}, ["logits"] + [pr for _, pr in self.names])
        self.past = {p: out[pr] for p, pr in self.names}
        return out["logits"]


class TorchDecoder:
    """The reference: HF LlamaModel + lm_head on `inputs_embeds` where the image positions hold
    the prompt-table rows, i.e. the lookup done outside any graph."""

    name = "torch"

    def __init__(self, engine: EngineDir):
        import torch

        from models.random_language import language_parts

        from .vision_backends import checkpoint_model

        if engine.decoder.get("weights") == "random-weights":
            raise UserError("--backend torch needs checkpoint weights; this engine was built with --random-weights")
        info = engine.config.get("model", {})
        self.language, self.head = language_parts(checkpoint_model(info.get("name"), info.get("path")))
        self.torch, self.sec = torch, engine.decoder
        self.cache = None

    def start(self, batch: int) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()

    def embeds(self, ids, table, tasks, prompt_vocab_size):
        torch = self.torch
        vocab = self.sec["vocab_size"]
        is_prompt = ids >= vocab
        emb = self.language.embed_tokens(torch.where(is_prompt, 0, ids))
        rows = ids - vocab + tasks[:, None] * prompt_vocab_size
        emb[is_prompt] = table[rows[is_prompt]].to(emb.dtype)
        return emb

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        with torch.no_grad():
            emb = self.embeds(t["input_ids"], t["prompt_embedding_table"].float(), t["tasks"],
                              int(t["prompt_vocab_size"][0]))
            out = self.language(inputs_embeds=emb, attention_mask=t["attention_mask"],
                                position_ids=t["position_ids"], past_key_values=self.cache, use_cache=True)
            self.cache = out.past_key_values
            return self.head(out.last_hidden_state[:, -1]).float().numpy()


def make_decoder(engine: EngineDir, backend: str, threads: int = 0) -> Any:
    if backend == "onnxruntime":
        return OrtDecoder(engine, threads)
    if backend == "torch":
        return TorchDecoder(engine)
    if backend == "tensorrt":
        return TrtDecoder(engine)
    raise UserError(f"unknown decoder backend {backend!r}")
