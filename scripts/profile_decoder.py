#!/usr/bin/env python
"""Where does our decoder spend its time beyond its FLOPs? ONNX Runtime's profiler on an engine
directory's decoder.onnx, plus measured effects of candidate fixes on patched copies of the graph.

    python scripts/profile_decoder.py ENGINE_DIR [--prefill 164 612] [--decode-at 196 644]
        [--threads 2] [--reps 5] [--out benchmarks/results/decoder_profile_cpu.json]

1. Profile: one prefill of each length (K image rows + 36 text tokens, as the pipeline feeds
   them) and decode steps at the given cache lengths; ONNX Runtime's per-node times grouped into
   what they are (weight GEMMs, attention GEMMs, softmax, mask, KV concat, the `Identity` copies
   behind `present.*`, layout ops, elementwise), with each group's share and, for GEMMs, the
   achieved FLOP rate. Shares are meaningful on a busy machine; absolute times are not.
   In-place-cache decoders (the default build) run with their buffers bound as input and
   output, as the runtime runs them; their TensorScatter writes and the Slice that copies the
   first T positions for attention are groups of their own.
2. Variants, timed in alternating order (A B C ... A B C ...) so a busy machine hits all alike,
   each reported as the median of its paired ratios to the graph as built:
   - `no-identity`: the 2 x layers `Identity` nodes removed (the KV `Concat` writes `present.*`);
   - `fused-projections` (+ no-identity): q/k/v and gate/up projections as one GEMM each, split after;
   - `iobinding`: the graph as built, run with ONNX Runtime's I/O binding so the 2 x layers
     `present.*` outputs stay OrtValues between steps instead of being copied into numpy arrays;
   - `no-identity+iobinding`: both;
   - `basic-opt`: graph optimisation level BASIC instead of the default ALL;
   - `no-spin`: intra-op threads that block instead of spinning.
   The graph variants are written next to a hard link of the engine's weights in a temp directory;
   the engine directory is not changed.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import load_guard  # noqa: E402
from ort_profile import is_weight_gemm, output_shape, print_summary, profiled_runs, summarize  # noqa: E402

TEXT_TOKENS = 36  # the benchmark prompt's text tokens around the image (bench_ttft's LLaVA-1.5 runs)
CONCAT_VARIANTS = ("no-identity", "iobinding", "no-identity+iobinding", "fused-projections", "basic-opt", "no-spin")
# an in-place decoder has no Identity copies, fused projections already, and is always bound
INPLACE_VARIANTS = ("basic-opt", "no-spin")


# ---- feeds --------------------------------------------------------------------------------------
class Feeds:
    """Inputs of a prefill or a decode step. With the in-place cache (config `kv_cache: inplace`)
    every past_key_values.* is the whole (1, kv, max_seq_len, d) buffer, and `run` binds it as
    both input and output as the runtime does (unbound, TensorScatter would copy it each run)."""

    def __init__(self, sec: dict):
        self.sec = sec
        self.past_names = [f"past_key_values.{i}.{kv}" for i in range(sec["num_layers"]) for kv in ("key", "value")]
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        self.inplace = sec.get("kv_cache") == "inplace"
        self.rng = np.random.default_rng(0)
        self._buffers: dict[int, dict] = {}

    def _cache(self, cached: int) -> dict:
        sec = self.sec
        length = sec["max_seq_len"] if self.inplace else cached
        shape = (1, sec["num_kv_heads"], length, sec["head_dim"])
        return {n: self.rng.standard_normal(shape, np.float32) * 0.1 if length else np.zeros(shape, np.float32)
                for n in self.past_names}

    def run(self, session, feeds: dict):
        """One run as the pipeline drives it: the in-place cache's buffers bound as input and
        output (made into OrtValues once per feeds, outside any timing), only the logits read
        back; other engines: a plain run."""
        if not self.inplace:
            return session.run(None, feeds)
        import onnxruntime as ort

        if id(feeds) not in self._buffers:
            self._buffers[id(feeds)] = {n: ort.OrtValue.ortvalue_from_numpy(feeds[n]) for n in self.past_names}
        binding = session.io_binding()
        for name, value in feeds.items():
            if name not in self.past_names:
                binding.bind_cpu_input(name, value)
        binding.bind_output("logits")
        for past, present in zip(self.past_names, self.present_names):
            buffer = self._buffers[id(feeds)][past]
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def prefill(self, tokens: int) -> dict:
        sec, image = self.sec, tokens - TEXT_TOKENS
        ids = [1] + [sec["vocab_size"] + j for j in range(image)] + list(range(10, 10 + TEXT_TOKENS - 1))
        feeds = {"input_ids": np.array([ids], np.int64), "position_ids": np.arange(tokens, dtype=np.int64)[None],
                 "attention_mask": np.ones((1, tokens), np.int64),
                 "prompt_embedding_table": self.rng.standard_normal((image, sec["hidden_size"]), np.float32),
                 "tasks": np.zeros(1, np.int64), "prompt_vocab_size": np.array([image], np.int64)}
        return {**feeds, **self._cache(0)}

    def decode(self, cached: int) -> dict:
        sec = self.sec
        feeds = {"input_ids": np.array([[42]], np.int64), "position_ids": np.array([[cached]], np.int64),
                 "attention_mask": np.ones((1, cached + 1), np.int64),
                 "prompt_embedding_table": self.rng.standard_normal((1, sec["hidden_size"]), np.float32),
                 "tasks": np.zeros(1, np.int64), "prompt_vocab_size": np.array([1], np.int64)}
        return {**feeds, **self._cache(cached)}


# ---- profile ------------------------------------------------------------------------------------
def categorizer(kv_heads: int, head_dim: int):
    def category(event: dict) -> str:
        args = event["args"]
        op, out = args["op_name"], output_shape(args)
        kv_like = len(out) == 4 and out[1] == kv_heads and out[3] == head_dim
        if op == "Identity":
            return "KV outputs: Identity copies behind present.*" if kv_like else "other Identity"
        if op == "Concat" and kv_like:
            return "KV cache: Concat past + new"
        if op == "TensorScatter":
            return "KV cache: TensorScatter write (in place)"
        if op == "Slice" and kv_like:
            return "KV cache: Slice of the first T positions (a copy)"
        if op in ("MatMul", "FusedMatMul", "Gemm"):
            return "GEMM with weights (projections, MLP, LM head)" if is_weight_gemm(args) else \
                "attention GEMMs (QK^T, PV)"
        if op == "Softmax":
            return "attention softmax"
        if op == "Where" and len(out) == 4:
            return "attention mask (Where on the scores)"
        if op == "Gather" and len(out) == 3:
            return "embedding + prompt-table gather"
        if op in ("Transpose", "Reshape", "Expand", "Unsqueeze", "Squeeze", "Slice", "Split", "Shape", "Concat",
                  "Gather"):
            return "layout (Transpose, Reshape, Split, ...)"
        if op in ("Range", "LessOrEqual", "And", "Greater", "Less", "Cast", "Where"):
            return "masks and indices"
        return "elementwise (RMSNorm, rotary, SiLU, residual)"

    return category


def profile(decoder: Path, cases: list[tuple[str, dict]], threads: int, reps: int, sec: dict,
            feeds: Feeds) -> dict:
    runs = profiled_runs(decoder, cases, threads, reps, run=feeds.run)
    category = categorizer(sec["num_kv_heads"], sec["head_dim"])
    out = {label: summarize(runs[label], category) for label, _ in cases}
    out["session_setup_s"] = runs["setup_s"]
    return out


# ---- graph variants -----------------------------------------------------------------------------
def _workdir_model(decoder: Path, tmp: Path, name: str, model) -> Path:
    """Save `model` (its initializers still pointing at the engine's .data file) beside a hard
    link to that file, so the copy shares the weights without writing them (ONNX Runtime refuses
    external data reached through a symlink out of the model's folder)."""
    import shutil

    import onnx

    data = decoder.with_name(decoder.name + ".data")
    link = tmp / data.name
    if not link.exists():
        try:
            os.link(data, link)
        except OSError:  # another file system
            shutil.copyfile(data, link)
    path = tmp / name
    onnx.save_model(model, str(path))
    return path


def without_identity(model):
    """Drops the Identity nodes behind present.*: the producer of each (the KV Concat) writes the
    graph output itself, and its other consumers read that name."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    rename = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] in outputs and node.output[0].startswith("present."):
            rename[node.input[0]] = node.output[0]
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for i, name in enumerate(node.output):
            if name in rename:
                node.output[i] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)
    return model


def fused_projections(decoder: Path, tmp: Path):
    """q/k/v and gate/up as one MatMul each (weights concatenated column-wise, a Split after):
    fewer, wider GEMMs over the same activations. Writes its own weight file."""
    import onnx
    from onnx import helper, numpy_helper

    model = without_identity(onnx.load(str(decoder), load_external_data=True))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    groups = {"qkv": ("q_proj", "k_proj", "v_proj"), "gateup": ("gate_proj", "up_proj")}
    by_input = collections.defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            by_input[node.input[0]].append(node)
    new_nodes, drop, new_inits = [], set(), []
    for x, nodes in by_input.items():
        for key, parts in groups.items():
            chosen = [next((n for n in nodes if n.input[1].endswith(f".{p}.weight")), None) for p in parts]
            if any(n is None for n in chosen):
                continue
            weights = [numpy_helper.to_array(inits[n.input[1]]) for n in chosen]
            name = chosen[0].input[1].replace(parts[0], key)
            new_inits.append(numpy_helper.from_array(np.concatenate(weights, axis=1), name))
            fused = f"{name}_out"
            split = helper.make_tensor(f"{name}_split", onnx.TensorProto.INT64, [len(parts)],
                                       [w.shape[1] for w in weights])
            new_inits.append(split)
            new_nodes.append((chosen[0], [helper.make_node("MatMul", [x, name], [fused], name=f"{name}_mm"),
                                          helper.make_node("Split", [fused, split.name], [n.output[0] for n in chosen],
                                                           axis=-1, name=f"{name}_split")]))
            drop.update(id(n) for n in chosen)
            for n in chosen:
                del inits[n.input[1]]
    first = {id(anchor): nodes for anchor, nodes in new_nodes}
    ordered = []
    for node in graph.node:
        if id(node) in first:
            ordered.extend(first[id(node)])
        if id(node) not in drop:
            ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.initializer[:]
    graph.initializer.extend(list(inits.values()) + new_inits)
    path = tmp / "fused.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="fused.onnx.data", size_threshold=1024)
    return path


# ---- timing -------------------------------------------------------------------------------------
class Runner:
    """One variant: a session plus how it is driven (numpy outputs, or I/O binding)."""

    def __init__(self, name: str, path: Path | None, threads: int, names: Feeds, iobinding: bool = False,
                 level: str = "all", spin: bool = True, session=None):
        import onnxruntime as ort

        self.name, self.iobinding, self.names = name, iobinding, names
        self._bound: dict[int, dict] = {}
        if session is not None:  # another way to drive an existing session
            self.session = session
            return
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                         "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def step(self, feeds: dict) -> float:
        """Seconds for one run, outputs materialised as the pipeline needs them (logits in numpy;
        present.* as numpy arrays, or as OrtValues ready to be bound as the next step's past)."""
        start = time.perf_counter()
        if self.names.inplace:  # the in-place cache is always bound, as the runtime does
            self.names.run(self.session, feeds)
            return time.perf_counter() - start
        if not self.iobinding:
            self.session.run(None, feeds)
            return time.perf_counter() - start
        # the pipeline would hold the previous step's present.* as OrtValues: make them once,
        # outside the timing (bind_cpu_input would copy every array on every call)
        if id(feeds) not in self._bound:
            import onnxruntime as ort

            self._bound[id(feeds)] = {n: ort.OrtValue.ortvalue_from_numpy(v) for n, v in feeds.items()}
        start = time.perf_counter()
        binding = self.session.io_binding()
        for name, value in self._bound[id(feeds)].items():
            binding.bind_ortvalue_input(name, value)
        for out in ["logits", *self.names.present_names]:
            binding.bind_output(out, "cpu")
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        outs[0].numpy()  # the logits go to the sampler
        return time.perf_counter() - start


def time_variants(runners: list[Runner], cases: list[tuple[str, dict]], reps: int) -> dict:
    """Per case: every runner once per rep (the order rotated each rep); median of paired ratios
    to the first runner (the graph as built)."""
    out = {}
    for label, feeds in cases:
        for r in runners:
            r.step(feeds)  # warm-up
        times = {r.name: [] for r in runners}
        for rep in range(reps):
            shift = rep % len(runners)  # rotate the order: no runner always follows the same one
            for r in runners[shift:] + runners[:shift]:
                times[r.name].append(r.step(feeds))
        base = times[runners[0].name]
        out[label] = {name: {"median_ms": statistics.median(t) * 1e3,
                             "ratio_to_as_built": statistics.median([a / b for a, b in zip(t, base)]),
                             "ratio_min": min(a / b for a, b in zip(t, base)),
                             "ratio_max": max(a / b for a, b in zip(t, base))} for name, t in times.items()}
    return out


def check_outputs(runners: list[Runner], feeds: dict) -> dict[str, bool]:
    """Bit-identical logits and present.* between each variant and the graph as built."""
    ref = runners[0].session.run(None, feeds)
    out = {}
    for r in runners[1:]:
        got = r.session.run(None, feeds)
        names = [o.name for o in r.session.get_outputs()]
        want = dict(zip([o.name for o in runners[0].session.get_outputs()], ref))
        out[r.name] = all(np.array_equal(want[n], g) for n, g in zip(names, got))
    return out


def main(argv=None) -> int:
    import onnx

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engine_dir", type=Path)
    p.add_argument("--prefill", nargs="+", type=int, default=[164, 612],
                   help="prefill lengths (image rows + 36 text tokens): K=128 and none by default")
    p.add_argument("--decode-at", nargs="+", type=int, default=[196, 644], help="cached tokens of the decode steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--variants", nargs="+",
                   help="default: " + " ".join(CONCAT_VARIANTS) + " (in-place-cache engines: "
                        + " ".join(INPLACE_VARIANTS) + ")")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decoder_profile_cpu.json")
    args = p.parse_args(argv)
    sec = json.loads((args.engine_dir / "config.json").read_text())["decoder"]
    decoder = args.engine_dir / sec["onnx"]
    feeds = Feeds(sec)
    allowed = INPLACE_VARIANTS if feeds.inplace else CONCAT_VARIANTS
    args.variants = args.variants or list(allowed)
    wrong = [v for v in args.variants if v not in allowed]
    if wrong:
        kind = "an in-place-cache" if feeds.inplace else "a concat-cache"
        print(f"error: variant(s) {', '.join(wrong)} do not apply to {kind} decoder (choose from "
              f"{', '.join(allowed)})", file=sys.stderr)
        return 2
    cases = [(f"prefill {n}", feeds.prefill(n)) for n in args.prefill]
    cases += [(f"decode at {n}", feeds.decode(n)) for n in args.decode_at]
    guard = load_guard.LoadGuard(allow_noisy=True)
    report = {"engine_dir": str(args.engine_dir), "threads": args.threads, "reps": args.reps,
              "note": "relative shares and paired ratios; absolute times depend on the machine's load",
              "decoder": {k: sec[k] for k in ("hidden_size", "num_layers", "num_heads", "head_dim", "vocab_size")}}
    with guard.round(label="profile"):
        report["profile"] = profile(decoder, cases, args.threads, args.reps, sec, feeds)
    with tempfile.TemporaryDirectory(dir=args.engine_dir.parent) as tmp:
        tmp = Path(tmp)
        # onnx refuses to read weights with several hard links: the fused copy first, links later
        fused = fused_projections(decoder, tmp) if "fused-projections" in args.variants else None
        runners = [Runner("as built", decoder, args.threads, feeds)]
        no_identity = None
        for v in args.variants:
            if v in ("no-identity", "no-identity+iobinding"):
                if no_identity is None:
                    no_identity = _workdir_model(decoder, tmp, "no_identity.onnx",
                                                 without_identity(onnx.load(str(decoder), load_external_data=False)))
                runners.append(Runner(v, no_identity, args.threads, feeds, iobinding=v.endswith("iobinding")))
            elif v == "fused-projections":
                runners.append(Runner(v, fused, args.threads, feeds))
            elif v == "iobinding":
                runners.append(Runner(v, None, args.threads, feeds, iobinding=True, session=runners[0].session))
            elif v == "basic-opt":
                runners.append(Runner(v, decoder, args.threads, feeds, level="basic"))
            elif v == "no-spin":
                runners.append(Runner(v, decoder, args.threads, feeds, spin=False))
            else:
                print(f"error: unknown variant {v!r}", file=sys.stderr)
                return 2
        report["identical_outputs"] = check_outputs([r for r in runners if not r.iobinding], cases[0][1])
        with guard.round(label="variants"):
            report["variants"] = time_variants(runners, cases, args.reps)
    guard.stamp(report, "scripts/profile_decoder.py", argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for label, prof in report["profile"].items():
        if label != "session_setup_s":
            print_summary(label, prof)
    print("\nvariants (median of paired ratios to the graph as built):")
    for label, rows in report["variants"].items():
        print(f"  {label}: " + ", ".join(f"{n} {r['ratio_to_as_built']:.3f}" for n, r in rows.items()))
    print(f"identical outputs: {report['identical_outputs']}\nwrote {args.out}"
          + ("  [machine was busy: compare shares and ratios only]" if report["noisy"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
