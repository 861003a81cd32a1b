"""Decoding with a TensorRT-LLM engine through `tensorrt_llm.runtime.ModelRunnerCpp` (or
`ModelRunner`), fed through the same prompt-table contract as our own decoder graph.

TensorRT-LLM runs the whole generation loop itself, so this backend offers `generate_ids`
instead of `step`. Argument layout (TensorRT-LLM releases that still build TensorRT engines):
`batch_input_ids` = list of int32 tensors with fake ids `vocab_size + b*K + j` at the image
positions, `prompt_table` = (B, K, hidden) so that its `prompt_vocab_size` is K, `prompt_tasks`
= "0,0,...", which makes the lookup row `id - vocab_size + 0 * K` = b*K + j.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .backends.base import SequenceDecoder
from .contract import DecoderSection
from .errors import UserError
from .optional import need


def _engine_limits(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is not a TensorRT-LLM engine directory (no readable config.json)") from None
    build = cfg.get("build_config", {})
    pre = cfg.get("pretrained_config", {})
    return {"vocab_size": pre.get("vocab_size"), "hidden_size": pre.get("hidden_size"),
            "max_batch_size": build.get("max_batch_size"), "max_input_len": build.get("max_input_len"),
            "max_prompt_embedding_table_size": build.get("max_prompt_embedding_table_size")}


class TrtLlmDecoder(SequenceDecoder):
    name = "tensorrt-llm"

    def __init__(self, engine_dir: str | Path, section: DecoderSection, prefer_cpp: bool = True):
        tllm = need("tensorrt_llm", "--trtllm-engine-dir")
        runtime = need("tensorrt_llm.runtime", "--trtllm-engine-dir")
        self.torch = need("torch", "--trtllm-engine-dir")
        path = Path(engine_dir)
        if not path.is_dir():
            raise UserError(f"TensorRT-LLM engine directory {path} does not exist")
        self.limits = _engine_limits(path)
        self.section = section
        if self.limits["vocab_size"] not in (None, section.vocab_size):
            raise UserError(f"the TensorRT-LLM engine has vocab {self.limits['vocab_size']}, the vision engine's "
                            f"decoder contract uses {section.vocab_size}: they come from different models")
        table = self.limits["max_prompt_embedding_table_size"]
        if table is not None and table < section.visual_tokens:
            raise UserError(f"the TensorRT-LLM engine was built with max_prompt_embedding_table_size {table} < "
                            f"K={section.visual_tokens}: rebuild it with --max_multimodal_len >= max_batch * K")
        use_cpp = prefer_cpp and getattr(runtime, "PYTHON_BINDINGS", False) and hasattr(runtime, "ModelRunnerCpp")
        cls = runtime.ModelRunnerCpp if use_cpp else runtime.ModelRunner
        rank = tllm.mpi_rank() if hasattr(tllm, "mpi_rank") else 0
        self.runner = cls.from_dir(engine_dir=str(path), rank=rank)
        self.runner_name = cls.__name__

    def generate_ids(self, prompts: Sequence[Sequence[int]], table: np.ndarray, k: int, max_new_tokens: int,
                     temperature: float, top_p: float, end_id: int, pad_id: int) -> np.ndarray:
        """(B, max_new_tokens) new token ids, padded with end_id after a request finishes."""
        torch = self.torch
        bsz = len(prompts)
        limit = self.limits["max_prompt_embedding_table_size"]
        if limit is not None and bsz * k > limit:
            raise UserError(f"batch {bsz} x K={k} exceeds the TensorRT-LLM engine's prompt table size {limit}")
        batch = [torch.tensor(list(p), dtype=torch.int32) for p in prompts]
        dtype = torch.float16 if self.section.dtype == "float16" else torch.float32
        prompt_table = torch.from_numpy(np.ascontiguousarray(table)).to(dtype).view(bsz, k, -1)
        sampling = {"top_k": 1} if temperature <= 0 else {"temperature": float(temperature), "top_p": float(top_p)}
        with torch.no_grad():
            out = self.runner.generate(
                batch_input_ids=batch, max_new_tokens=int(max_new_tokens), end_id=int(end_id), pad_id=int(pad_id),
                prompt_table=prompt_table, prompt_tasks=",".join("0" for _ in prompts),
                output_sequence_lengths=True, return_dict=True, **sampling,
            )
        ids = out["output_ids"][:, 0].cpu().numpy()  # (B, input + new), beam 0
        lengths = out["sequence_lengths"][:, 0].cpu().numpy()
        result = np.full((bsz, max_new_tokens), end_id, np.int64)
        for b, prompt in enumerate(prompts):
            new = ids[b, len(prompt): int(lengths[b])][:max_new_tokens]
            result[b, : len(new)] = new
        return result
