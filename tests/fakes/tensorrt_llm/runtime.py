"""ModelRunner / ModelRunnerCpp stand-ins; see the package docstring."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

PYTHON_BINDINGS = True


class ModelRunner:
    def __init__(self, engine_dir: Path):
        import onnxruntime as ort

        import tensorrt_llm

        self.calls = tensorrt_llm.CALLS
        cfg = json.loads((engine_dir / "config.json").read_text())
        self.vocab = cfg["pretrained_config"]["vocab_size"]
        onnx = Path(cfg["edgeprune_decoder_onnx"])
        self.layers = cfg["pretrained_config"]["num_hidden_layers"]
        self.kv = (cfg["pretrained_config"]["num_key_value_heads"], cfg["edgeprune_head_dim"])
        self.dtype = np.float16 if cfg["pretrained_config"]["dtype"] == "float16" else np.float32
        self.session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        # an in-place KV-cache decoder takes fixed (B, kv, max_seq, d) buffers; a concat one grows them
        past_len = next(i.shape[2] for i in self.session.get_inputs() if i.name.startswith("past_key_values"))
        self.cache_len = past_len if isinstance(past_len, int) else 0

    @classmethod
    def from_dir(cls, engine_dir: str, rank: int = 0, **kwargs):
        import tensorrt_llm

        assert isinstance(engine_dir, str) and rank == 0
        tensorrt_llm.CALLS.append((f"{cls.__name__}.from_dir", {"engine_dir": engine_dir, "rank": rank, **kwargs}))
        return cls(Path(engine_dir))

    def generate(self, batch_input_ids, *, max_new_tokens, end_id, pad_id, prompt_table=None, prompt_tasks=None,
                 output_sequence_lengths=False, return_dict=False, top_k=None, temperature=None, top_p=None):
        self.calls.append((f"{type(self).__name__}.generate", dict(
            batch_input_ids=batch_input_ids, max_new_tokens=max_new_tokens, end_id=end_id, pad_id=pad_id,
            prompt_table=prompt_table, prompt_tasks=prompt_tasks, output_sequence_lengths=output_sequence_lengths,
            return_dict=return_dict, top_k=top_k, temperature=temperature, top_p=top_p)))
        assert isinstance(batch_input_ids, list) and all(t.dtype == torch.int32 and t.dim() == 1 for t in batch_input_ids)
        assert isinstance(prompt_tasks, str) and prompt_table.dim() == 3
        tasks = np.array([int(t) for t in prompt_tasks.split(",")], np.int64)
        assert len(tasks) == len(batch_input_ids)
        task_vocab_size = prompt_table.shape[1]  # what TensorRT-LLM derives from a 3-D table
        table = prompt_table.reshape(-1, prompt_table.shape[-1]).numpy().astype(self.dtype)
        outs, lengths = [], []
        for b, ids in enumerate(batch_input_ids):  # in-flight batching: requests are independent
            seq = ids.numpy().astype(np.int64)[None]
            past = {f"past_key_values.{i}.{n}": np.zeros((1, *self.kv[:1], self.cache_len, self.kv[1]), self.dtype)
                    for i in range(self.layers) for n in ("key", "value")}
            new, cur = [], seq
            for _ in range(max_new_tokens):
                total = seq.shape[1] + len(new)
                pos = np.arange(total - cur.shape[1], total)[None]
                res = self.session.run(None, {"input_ids": cur, "position_ids": pos,
                                              "attention_mask": np.ones((1, total), np.int64),
                                              "prompt_embedding_table": table, "tasks": tasks[b:b + 1],
                                              "prompt_vocab_size": np.array([task_vocab_size], np.int64), **past})
                names = [o.name for o in self.session.get_outputs()]
                past = {n.replace("present.", "past_key_values."): v for n, v in zip(names[1:], res[1:])}
                token = int(res[0][0].argmax())
                new.append(token)
                cur = np.array([[token]], np.int64)
                if token == end_id:
                    break
            outs.append(list(seq[0]) + new)
            lengths.append(len(outs[-1]))
        width = max(lengths)
        output_ids = torch.full((len(outs), 1, width), end_id, dtype=torch.int32)
        for b, row in enumerate(outs):
            output_ids[b, 0, : len(row)] = torch.tensor(row, dtype=torch.int32)
        return {"output_ids": output_ids, "sequence_lengths": torch.tensor(lengths, dtype=torch.int32)[:, None]}


class ModelRunnerCpp(ModelRunner):
    pass
