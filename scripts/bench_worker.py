"""One benchmark contender in its own process, kept alive across the rounds of a benchmark.

    python scripts/bench_worker.py SPEC_JSON      (started by scripts/bench_rounds.py)

Why a process per contender: peak RSS is a per-process high-water mark, so contenders sharing a
process would all report the largest; and a contender restarted every round would pay its
loading and warm-up each time. The worker loads its model once, runs the warm-up, resets its
high-water mark (/proc/self/clear_refs, so loading peaks are reported apart from run peaks), and
then answers one line per request on stdin: `run` -> one generation's measurements as a JSON
line on the original stdout; `quit` -> exit. Library output goes to stderr.

Contender kinds (`spec["kind"]`):
- `ours`: an engine directory through `runtime.Pipeline` with ONNX Runtime;
- `hf_full`: `Llava(Next)ForConditionalGeneration.generate` on the checkpoint, default attention;
- `hf_papers`: the pruning papers' code path: the HF vision tower with eager attention and
  `output_attentions=True`, `exporter.pruning.select_tokens` on the maps, the projector on the K
  kept rows, then `generate(inputs_embeds=...)` (LLaVA-NeXT: every view pruned to
  floor(K / views) and merged base view first, then the crops in raster order, as our engines do).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---- process memory ---------------------------------------------------------------------------
def memory_mib() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process in MiB."""
    text = Path("/proc/self/status").read_text()
    out = {}
    for key, name in (("VmRSS", "rss_mib"), ("VmHWM", "hwm_mib")):
        m = re.search(rf"{key}:\s+(\d+) kB", text)
        out[name] = round(int(m.group(1)) / 1024, 1) if m else None
    return out


def reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---- the runtime's results, read in one place ------------------------------------------------
def generation_timings(gen) -> dict:
    """vision_s, prefill_s, decode_s (list) of a runtime Generation. The runtime is moving from
    `gen.timings["vision_s"]` to typed results (`gen.timings.vision_s`): this is the one line to
    port."""
    t = gen.timings
    get = t.get if isinstance(t, dict) else (lambda k: getattr(t, k))
    return {"vision_s": get("vision_s"), "prefill_s": get("prefill_s"), "decode_s": list(get("decode_s") or [])}


def read_generation(gen) -> dict:
    """Everything the benchmark reads from a runtime Generation."""
    return {**generation_timings(gen), "token_ids": [int(t) for t in gen.token_ids], "kept": gen.kept_indices,
            "visual_tokens": int(gen.visual_tokens)}


def prompt_tokens(pipe, prompt: str, visual: int) -> int:
    """Length of the prompt the pipeline feeds (image positions included)."""
    return len(pipe.inputs.prompt_ids(prompt, 0, pipe.engine.visual_tokens, visual))


# ---- contenders ---------------------------------------------------------------------------------
class Ours:
    def __init__(self, spec: dict):
        from runtime import Pipeline

        self.spec = spec
        self.pipe = Pipeline.from_dir(spec["engine_dir"], "onnxruntime", threads=spec["threads"])

    def info(self, result: dict) -> dict:
        visual = result["visual_tokens"]
        return {"prompt_tokens": prompt_tokens(self.pipe, self.spec["prompt"], visual), "visual_tokens": visual,
                "backend": "onnxruntime"}

    def run(self) -> dict:
        gen = self.pipe.generate(self.spec["image"], self.spec["prompt"], max_new_tokens=self.spec["new_tokens"],
                                 ignore_eos=True)
        return read_generation(gen)


class _TokenClock:
    """A generate() streamer that timestamps every new token (the first `put` is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.tokens: list[int] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _HF:
    """What the two HF contenders share: the checkpoint, its processor and a greedy generate
    that produces exactly `new_tokens` tokens (EOS does not stop it, as ignore_eos in ours)."""

    def __init__(self, spec: dict):
        import copy

        import torch
        import transformers
        from PIL import Image
        from transformers import AutoProcessor

        torch.set_num_threads(spec["threads"])
        self.torch, self.spec = torch, spec
        config = transformers.AutoConfig.from_pretrained(spec["checkpoint"], local_files_only=True)
        model_class = getattr(transformers, config.architectures[0])
        self.model = model_class.from_pretrained(spec["checkpoint"], dtype=torch.float32,
                                                 local_files_only=True).eval()
        self.processor = AutoProcessor.from_pretrained(spec["checkpoint"], local_files_only=True)
        self.image = Image.open(spec["image"]).convert("RGB")
        self.chat = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": spec["prompt"]}]}],
            add_generation_prompt=True, tokenize=False)
        gen = copy.deepcopy(self.model.generation_config)
        gen.max_new_tokens, gen.min_new_tokens = spec["new_tokens"], None
        gen.do_sample, gen.eos_token_id = False, None
        gen.pad_token_id = self.processor.tokenizer.pad_token_id
        self.generation_config = gen
        self.inner = self.model.model

    def generate(self, **inputs) -> _TokenClock:
        clock = _TokenClock()
        with self.torch.no_grad():
            self.model.generate(**inputs, generation_config=self.generation_config, streamer=clock)
        return clock

    @staticmethod
    def timings(start: float, vision_s: float, clock: _TokenClock) -> dict:
        ttft = clock.times[0] - start
        decode = [b - a for a, b in zip(clock.times, clock.times[1:])]
        return {"vision_s": vision_s, "prefill_s": ttft - vision_s, "decode_s": decode}


class HfFull(_HF):
    """`generate(**processor(image, text))`: vision tower on all 576 patches (per view), default
    attention. The vision time is read with hooks on the tower (start) and the projector (end)."""

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.inputs = self.processor(images=self.image, text=self.chat, return_tensors="pt")
        self.marks: dict[str, float] = {}
        self.inner.vision_tower.register_forward_pre_hook(self._mark("start"))
        self.inner.multi_modal_projector.register_forward_hook(self._mark("end"))

    def _mark(self, name: str):
        def hook(*_) -> None:  # a hook must return None: anything else replaces the module's inputs/outputs
            self.marks.setdefault(name, time.perf_counter())
        return hook

    def info(self, result: dict) -> dict:
        return {"prompt_tokens": int(self.inputs["input_ids"].shape[1]), "visual_tokens": result["visual_tokens"],
                "backend": "transformers"}

    def run(self) -> dict:
        self.marks.clear()
        start = time.perf_counter()
        clock = self.generate(**self.inputs)
        vision = self.marks["end"] - self.marks["start"]
        count = int((self.inputs["input_ids"] == self.model.config.image_token_id).sum())
        return {**self.timings(start, vision, clock), "token_ids": clock.tokens, "visual_tokens": count}


class HfPapers(_HF):
    def __init__(self, spec: dict):
        super().__init__(spec)
        from exporter.pruning import layer_scores, select_tokens

        self.layer_scores, self.select_tokens = layer_scores, select_tokens
        self.inner.vision_tower.config._attn_implementation = "eager"  # the maps need eager attention
        self.next = hasattr(self.inner, "image_newline")
        out = self.processor.image_processor(self.image, return_tensors="pt")
        pixels = out["pixel_values"]
        if self.next:  # (1, views, 3, S, S) -> the image's own views, base first
            from models.anyres import image_layout

            self.layout = image_layout(self.model.config, tuple(int(x) for x in out["image_sizes"][0]))
            pixels = pixels[0, : self.layout.views]
        self.pixels = pixels.float()
        side = self.model.config.vision_config.image_size // self.model.config.vision_config.patch_size
        self.grid = (side, side)
        views = self.pixels.shape[0]
        self.k_view = spec["keep"] // views if self.next else spec["keep"]
        # prompt with one image token per kept row (the count is fixed by K and the layout)
        from exporter.pruning import make_config

        per_view = make_config(spec["method"], self.k_view, grid=self.grid,
                               num_layers=self.model.config.vision_config.num_hidden_layers).output_count
        tokenizer = self.processor.tokenizer
        ids = tokenizer(self.chat, add_special_tokens=True)["input_ids"]
        image_id = self.model.config.image_token_id
        where = ids.index(image_id)
        self.count = per_view * views
        self.ids = self.torch.tensor([ids[:where] + [image_id] * self.count + ids[where + 1:]])
        self.image_rows = self.ids[0] == image_id

    def info(self, result: dict) -> dict:
        return {"prompt_tokens": int(self.ids.shape[1]), "visual_tokens": self.count, "backend": "transformers"}

    def visual(self) -> tuple:
        """(visual tokens (count, H), kept indices, selection seconds)."""
        torch, cfg = self.torch, self.model.config
        out = self.inner.vision_tower(self.pixels, output_hidden_states=True, output_attentions=True)
        feats = out.hidden_states[cfg.vision_feature_layer][:, 1:]
        t0 = time.perf_counter()
        kept = self.select_tokens(self.spec["method"], self.layer_scores(out.attentions), self.k_view, grid=self.grid)
        selection = time.perf_counter() - t0
        rows = torch.gather(feats, 1, kept[..., None].expand(-1, -1, feats.shape[-1]))
        visual = self.inner.multi_modal_projector(rows)
        if self.next:  # base view first, then the crops' tokens in raster order of the stitched grid
            from runtime.anyres import arrange_spatial

            merged, per_view = arrange_spatial(visual.numpy(), kept.numpy(), self.layout, kept.shape[1], self.grid)
            return torch.from_numpy(merged), per_view, selection
        return visual[0], kept[0].tolist(), selection

    def run(self) -> dict:
        torch = self.torch
        start = time.perf_counter()
        with torch.no_grad():
            visual, kept, selection = self.visual()
            vision = time.perf_counter() - start
            embeds = self.inner.get_input_embeddings()(self.ids)
            embeds[0, self.image_rows] = visual.to(embeds.dtype)
        clock = self.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(self.ids))
        return {**self.timings(start, vision, clock), "token_ids": clock.tokens, "kept": kept,
                "visual_tokens": self.count, "selection_s": selection}


KINDS = {"ours": Ours, "hf_full": HfFull, "hf_papers": HfPapers}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    started = time.perf_counter()
    contender = KINDS[spec["kind"]](spec)
    for _ in range(max(1, spec.get("warmup", 1))):
        first = contender.run()
    load = memory_mib()
    reset = reset_peak()
    reply.write(json.dumps({"ready": True, "pid": os.getpid(), "init_s": round(time.perf_counter() - started, 2),
                            "rss_loaded_mib": load["rss_mib"], "peak_rss_load_mib": load["hwm_mib"],
                            "peak_reset": reset, **contender.info(first)}) + "\n")
    for line in sys.stdin:
        request = line.strip()
        if request == "quit":
            break
        if request != "run":
            continue
        result = contender.run()
        result.update(memory_mib())
        reply.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
