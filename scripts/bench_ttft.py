#!/usr/bin/env python
"""Time to first token with and without pruning, next to the ideal ratio from FLOPs.

Builds one `none` engine and one per method and K (64, 128, 192) for one model, runs
`runtime.bench` on them, and reports TTFT(K)/TTFT(none) beside the FLOP ratio counted from the
model's shapes. The default model, `llava-1.5-7b-cpu`, is a random-weight LLaVA scaled down so
that a 2-core CPU measures it in minutes while its vision/LLM cost balance matches
LLaVA-1.5-7B: the vision tower costs about as much as 29 LLM tokens (7B: 382 / 12.95 = 29.5),
so the ideal TTFT ratio at K=128 is ~0.32 in both (see `balance` in the JSON).

    python scripts/bench_ttft.py --out benchmarks/results/ttft_cpu.json --plot benchmarks/results/ttft_cpu.png

`--model llava-next-7b-cpu` does the same for LLaVA-NeXT (same scaled widths, the real anyres
layouts) on a square 672 px image (5 views, 2880 patches; the stock `none` path feeds 2928
tokens with its row newlines) at K = 640, 320, 160 per image.

Methods: hivtp, hiprune, scope, visionzip by default (`--methods`). The FLOP ideal counts the
encoder, the projector on the kept rows and the prefill; selection costs (SCOPE's Gram matrix,
0.2 % of the CLIP-L encoder, and its K-step loop) are left out of it and show up in the
measured ratio.

Every engine runs in its own worker process, all of them in alternating rounds
(scripts/bench_rounds.py) under the load guard (scripts/load_guard.py): a run during which other
processes loaded the machine is refused (exit code 3) unless --allow-noisy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import load_guard  # noqa: E402
from engine_cache import cached_build  # noqa: E402

from runtime.contract import read_config  # noqa: E402

SCALED = "llava-1.5-7b-cpu"
SCALED_NEXT = "llava-next-7b-cpu"
NEXT_IMAGE_SIDE = 672  # a square image: the 2 x 2 layout, 5 views = 2880 patches (the stock path adds 48 newlines)
PROMPT = "Describe the picture in detail."


def register_scaled_spec() -> None:
    """CLIP-L/14-336 geometry (336 px, 14 px patches, the 24 x 24 grid) at width 256 (4 heads of
    64) and 12 layers, so hivtp (layers 7-9) and hiprune (layers 9 and L-2) read real layers; a
    narrower 24-layer tower would spend ~45 % of its FLOPs in attention maps (CLIP-L: ~9 %) and
    run far below the LLM's FLOP rate. LLM: LLaMA width 1536 (12 heads of 128), 9 layers, 7B's
    vocabulary. Vision = ~33 LLM tokens (LLaVA-1.5-7B: 30)."""
    from models.specs import CLIP_VIT_L_336, LLAVA_TOP, SPECS, VICUNA_7B, ModelSpec

    vision = {**CLIP_VIT_L_336, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
              "num_hidden_layers": 12, "projection_dim": 256}
    text = {**VICUNA_7B, "hidden_size": 1536, "intermediate_size": 4128, "num_hidden_layers": 9,
            "num_attention_heads": 12, "num_key_value_heads": 12}
    SPECS.setdefault(SCALED, ModelSpec(SCALED, "edgeprune/" + SCALED, "LlavaForConditionalGeneration",
                                       LLAVA_TOP, text, vision))
    from models.specs import LLAVA_NEXT_TOP

    SPECS.setdefault(SCALED_NEXT, ModelSpec(SCALED_NEXT, "edgeprune/" + SCALED_NEXT, "LlavaNextForConditionalGeneration",
                                            LLAVA_NEXT_TOP, text, vision))


# ---- FLOPs (multiply-add = 2), counted the way MODELS.md counts LLaVA-1.5-7B -----------------
def vision_flops(vc, text_hidden: int, keep: int, views: int = 1) -> float:
    """`views` encoder passes (LLaVA-NeXT: base + crops) and the projector on `keep` rows in all."""
    return views * _encoder_flops(vc) + 2 * keep * (vc.hidden_size * text_hidden + text_hidden * text_hidden)


def _encoder_flops(vc) -> float:
    t = (vc.image_size // vc.patch_size) ** 2 + 1
    h, i = vc.hidden_size, vc.intermediate_size
    layer = 2 * t * (4 * h * h + 2 * h * i) + 2 * 2 * t * t * h
    patch = 2 * (t - 1) * 3 * vc.patch_size ** 2 * h
    return patch + (vc.num_hidden_layers - 1) * layer  # layer 24 is never run


def llm_token_flops(tc) -> float:
    h, i = tc.hidden_size, tc.intermediate_size
    kv = h * (tc.num_key_value_heads or tc.num_attention_heads) // tc.num_attention_heads
    return 2 * tc.num_hidden_layers * (2 * h * h + 2 * h * kv + 3 * h * i)


def prefill_flops(tc, tokens: int) -> float:
    attention = 2 * 2 * tokens * tokens * tc.hidden_size * tc.num_hidden_layers
    return tokens * llm_token_flops(tc) + attention + 2 * tc.hidden_size * tc.vocab_size


def ttft_flops(config, keep: int, text_tokens: int, views: int = 1, projected: int | None = None) -> float:
    """`keep` visual tokens reach the LLM; `projected` rows go through the projector (default keep)."""
    projected = keep if projected is None else projected
    return vision_flops(config.vision_config, config.text_config.hidden_size, projected, views) + \
        prefill_flops(config.text_config, keep + text_tokens)


def balance(config, text_tokens: int) -> dict:
    v = vision_flops(config.vision_config, config.text_config.hidden_size, 576)
    tok = llm_token_flops(config.text_config)
    return {"vision_gflops": v / 1e9, "llm_gflops_per_token": tok / 1e9, "vision_in_llm_tokens": v / tok,
            "ideal_ttft_ratio_k128": ttft_flops(config, 128, text_tokens) / ttft_flops(config, 576, text_tokens)}


# ---- builds -----------------------------------------------------------------------------------
def build(model: str, method: str, keep: int | None, root: Path, random_weights: bool, precision: str,
          anyres: bool = False) -> Path:
    from exporter.build import BuildOptions
    from exporter.build import build as run_build

    out = root / f"{model}-{method}-k{keep or 576}-{precision}"
    max_input_len = None if anyres else 700  # anyres: sized by the build from the image tokens
    return cached_build(out, lambda: run_build(BuildOptions(
        model=model, keep=keep, out=out, method=method, random_weights=random_weights, precision=precision,
        backend="onnx", selector="onnx", max_input_len=max_input_len, max_output_len=64,
        command="scripts/bench_ttft.py")))


def image_336(work: Path) -> Path:
    """runtime.bench's default picture (LLaVA-1.5 runs), saved so worker processes can read it."""
    path = work / "image_336.png"
    if not path.exists():
        from runtime.bench import _default_image

        work.mkdir(parents=True, exist_ok=True)
        _default_image().save(path)
    return path


def next_image(work: Path) -> Path:
    """A fixed square photo-like image: LLaVA-NeXT's 2 x 2 layout, 5 views (2880 patches)."""
    import numpy as np
    from PIL import Image

    path = work / f"next_{NEXT_IMAGE_SIDE}.png"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        small = rng.integers(0, 255, (42, 42, 3), dtype=np.uint8)
        Image.fromarray(small).resize((NEXT_IMAGE_SIDE, NEXT_IMAGE_SIDE), Image.BILINEAR).save(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=SCALED,
                   help=f"default: {SCALED} (random weights); {SCALED_NEXT} for LLaVA-NeXT; or tiny-llava, ...")
    p.add_argument("--methods", nargs="+", default=["hivtp", "hiprune", "scope", "visionzip"])
    p.add_argument("--keeps", nargs="+", type=int, help="default 64 128 192; LLaVA-NeXT models: 640 320 160")
    p.add_argument("--runs", "--rounds", dest="runs", type=int, default=5,
                   help="alternating rounds (one timed run of every engine each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per engine before the rounds")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    p.add_argument("--work", type=Path, default=ROOT / "engines" / "bench")
    p.add_argument("--out", type=Path, help="default benchmarks/results/ttft_cpu.json (LLaVA-NeXT: ttft_next_cpu.json)")
    p.add_argument("--plot", type=Path)
    load_guard.add_arguments(p)
    args = p.parse_args(argv)

    from models import load_model
    from runtime.bench import plot, table

    from bench_rounds import Contender, WorkerFailed, run_rounds, summarize

    from models.anyres import image_layout, is_anyres

    register_scaled_spec()
    random_weights = args.model not in ("tiny-llava", "tiny-llava-next")
    config = load_model(args.model, random_weights=random_weights).config
    anyres = is_anyres(config)
    keeps = args.keeps or ([640, 320, 160] if anyres else [64, 128, 192])
    args.out = args.out or ROOT / "benchmarks" / "results" / ("ttft_next_cpu.json" if anyres else "ttft_cpu.json")
    image = next_image(args.work) if anyres else None
    views = image_layout(config, (NEXT_IMAGE_SIDE, NEXT_IMAGE_SIDE)).views if anyres else 1
    dirs = [build(args.model, "none", None, args.work, random_weights, args.precision, anyres)]
    dirs += [build(args.model, m, k, args.work, random_weights, args.precision, anyres)
             for m in args.methods for k in keeps]
    image = image or image_336(args.work)
    common = {"kind": "ours", "threads": args.threads, "new_tokens": args.new_tokens, "prompt": PROMPT,
              "image": str(image), "warmup": args.warmup}
    contenders = [Contender(d.name, "ours", "", None, dict(common, engine_dir=str(d))) for d in dirs]
    guard = load_guard.from_args(args)
    try:
        run_rounds(contenders, args.runs, guard, args.threads, label=args.model)
    except WorkerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = []
    for c, d in zip(contenders, dirs):
        r = summarize(c, args.threads)
        r["method"] = read_config(d).vision.pruning.method
        results.append(r)
    print(table(results))
    base = results[0]
    text_tokens = base["prompt_tokens"] - base["keep"]
    print(f"\n{'method':<9} {'K':>4} {'TTFT ratio':>11} {'ideal (FLOPs)':>14} {'deviation':>10} {'decode tok/s ratio':>19}")
    for r in results:
        measured = r["ttft_s"]["median"] / base["ttft_s"]["median"]
        # every view is encoded; the projector sees all views' rows unpruned, K rows pruned
        projected = views * 576 if r["method"] == "none" else r["keep"]
        r["views"] = views
        r["ttft_gflops"] = ttft_flops(config, r["keep"], text_tokens, views, projected) / 1e9
        ideal = r["ttft_gflops"] / (ttft_flops(config, base["keep"], text_tokens, views, views * 576) / 1e9)
        r["ttft_ratio"], r["ideal_ratio"] = measured, ideal
        r["ratio_deviation"] = measured / ideal - 1
        r["decode_ratio"] = r["decode_tokens_per_s"]["median"] / base["decode_tokens_per_s"]["median"]
        print(f"{r['method']:<9} {r['keep']:>4} {measured:>11.3f} {ideal:>14.3f} {r['ratio_deviation']:>+10.1%} "
              f"{r['decode_ratio']:>19.3f}")
    from models.specs import SPECS, llava_config

    report = {
        "model": args.model, "random_weights": random_weights, "precision": args.precision, "backend": "onnxruntime",
        "text_tokens": text_tokens, "balance": balance(config, text_tokens),
        "image": {"path": str(image), "size": [NEXT_IMAGE_SIDE, NEXT_IMAGE_SIDE], "views": views} if anyres else None,
        "balance_llava_1.5_7b": balance(llava_config(SPECS["llava-1.5-7b"]), text_tokens),
        "shapes": {"vision": {k: getattr(config.vision_config, k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")},
            "text": {k: getattr(config.text_config, k) for k in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")}},
        "rounds": args.runs,
        "results": results,
    }
    guard.stamp(report, "scripts/bench_ttft.py", argv)
    busy = guard.refusal()
    if busy:
        print(f"error: {busy}", file=sys.stderr)
        return 3
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(results, args.plot, title=f"{args.model}: TTFT and decode speed, ONNX Runtime CPU")
    print(f"\nwrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
