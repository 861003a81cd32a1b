#!/usr/bin/env python
"""Our engines side by side with what a user would run instead, on the same weights.

Contenders, in alternating rounds (one worker process each, scripts/bench_rounds.py):
- `HF full`: `Llava(Next)ForConditionalGeneration.generate`, default attention, all patches;
- `papers <method> K`: the pruning papers' path: the HF vision tower with eager attention and
  `output_attentions=True`, `exporter.pruning.select_tokens` on the maps, the projector on the K
  kept rows, `generate(inputs_embeds=...)`;
- `ours none` and `ours <method> K`: our engine directories through `runtime.Pipeline` on ONNX
  Runtime.
The models are the scaled LLaVA-1.5-7B-balance model of bench_ttft.py and its LLaVA-NeXT twin,
saved once as a random-weight checkpoint (scripts/bench_models.py) that transformers loads and
our exporter builds from: the same weights everywhere, so `ours none` must give HF full's tokens
and `ours <method> K` the papers' path's kept indices and tokens (the `agreement` section).

    python scripts/bench_peers.py                       # both models, 9 rounds (quiet machine!)
    python scripts/bench_peers.py --quick               # dry run on the tiny models, 2 rounds

Writes JSON (default benchmarks/results/peers_cpu.json) and a plot; `scripts/readme_tables.py`
makes the README table from the JSON. A run during which other processes loaded the machine is
refused (exit code 3, the rejected JSON is kept under --work) unless --allow-noisy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import load_guard  # noqa: E402
from engine_cache import cached_build  # noqa: E402
from bench_rounds import Contender, WorkerFailed, paired_ratio, run_rounds, summarize  # noqa: E402

PROMPT = "Describe the picture in detail."
MODELS = ("llava-1.5-7b-cpu", "llava-next-7b-cpu")
QUICK_MODELS = ("tiny-llava", "tiny-llava-next")
METHODS = ("hivtp", "hiprune")
KEEPS = {False: (64, 128, 192), True: (640, 320, 160)}  # LLaVA-1.5 / LLaVA-NeXT (per image)
QUICK_KEEPS = {False: (64,), True: (320,)}
TARGET_KEEP = 128  # the targets are stated for K = 128 on the LLaVA-1.5 model
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "peers_cpu.json"


# ---- models, images, engines --------------------------------------------------------------------
def model_config(checkpoint: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(checkpoint, local_files_only=True)


def image_for(anyres: bool, work: Path) -> Path:
    """LLaVA-1.5: runtime.bench's default 336 px picture; LLaVA-NeXT: bench_ttft's square 672 px
    image (5 views)."""
    from bench_ttft import next_image

    if anyres:
        return next_image(work)
    path = work / "image_336.png"
    if not path.exists():
        from runtime.bench import _default_image

        work.mkdir(parents=True, exist_ok=True)
        _default_image().save(path)
    return path


def build_engine(checkpoint: Path, method: str, keep: int | None, work: Path, anyres: bool,
                 max_output_len: int) -> Path:
    """An fp32 ONNX engine directory from the checkpoint (cached under --work)."""
    from exporter.build import BuildOptions, build

    out = work / checkpoint.name / f"{method}-k{keep or 'all'}"
    return cached_build(out, lambda: build(BuildOptions(
        model=str(checkpoint), keep=keep, out=out, method=method, precision="fp32", backend="onnx", selector="onnx",
        max_input_len=None if anyres else 700, max_output_len=max_output_len, command="scripts/bench_peers.py")))


def contenders_for(checkpoint: Path, anyres: bool, methods, keeps, work: Path, common: dict) -> list[Contender]:
    """HF full, ours none, then for every method and K the papers' path next to ours."""
    image = str(image_for(anyres, work))
    base = dict(common, checkpoint=str(checkpoint), image=image)
    max_out = max(64, common["new_tokens"])
    out = [Contender("HF full", "hf_full", "none", None, dict(base, kind="hf_full")),
           Contender("ours none", "ours", "none", None,
                     dict(base, kind="ours", engine_dir=str(build_engine(checkpoint, "none", None, work, anyres, max_out))))]
    for method in methods:
        for keep in keeps:
            out.append(Contender(f"papers {method} K={keep}", "hf_papers", method, keep,
                                 dict(base, kind="hf_papers", method=method, keep=keep)))
            engine = build_engine(checkpoint, method, keep, work, anyres, max_out)
            out.append(Contender(f"ours {method} K={keep}", "ours", method, keep,
                                 dict(base, kind="ours", engine_dir=str(engine))))
    return out


# ---- analysis ----------------------------------------------------------------------------------
def _first_mismatch(a, b) -> int | None:
    if a == b:
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def agreement(by_name: dict[str, Contender]) -> list[dict]:
    """Same weights, same inputs: ours none vs HF full (tokens), ours <m> K vs papers <m> K
    (kept indices and tokens). Greedy tokens can part after a near-tie of two logits (fp32
    rounding differs between the libraries); the first differing position is recorded."""
    pairs = [("ours none", "HF full")] + [(n, "papers" + n[len("ours"):]) for n in by_name
                                          if n.startswith("ours ") and n != "ours none"]
    out = []
    for ours, peer in pairs:
        a, b = by_name[ours].samples[-1], by_name[peer].samples[-1]
        row = {"ours": ours, "peer": peer, "tokens_equal": a["token_ids"] == b["token_ids"],
               "first_token_mismatch": _first_mismatch(a["token_ids"], b["token_ids"])}
        if "kept" in b:
            row["kept_equal"] = a.get("kept") == b["kept"]
        out.append(row)
    return out


def flops_ideal(config, summaries: list[dict], views: int) -> dict[str, float]:
    """TTFT FLOPs of each contender over ours none's (bench_ttft's counting)."""
    from bench_ttft import ttft_flops

    base = next(s for s in summaries if s["name"] == "ours none")
    text = base["prompt_tokens"] - base["keep"]
    full = ttft_flops(config, base["keep"], text, views, views * 576)
    out = {}
    for s in summaries:
        projected = views * 576 if s["method"] == "none" else s["keep"]
        out[s["name"]] = ttft_flops(config, s["keep"], text, views, projected) / full
    return out


def targets(model: dict) -> list[dict]:
    """The issue's CPU targets at K = 128 (LLaVA-1.5 model): ours K/none within 10 % of the
    FLOPs ideal, <= 0.7x the papers' path, <= 0.25x HF full."""
    out = []
    for s in model["contenders"]:
        if s["group"] != "ours" or s["requested_keep"] != TARGET_KEEP:
            continue
        name, ratios = s["name"], model["ratios"][s["name"]]
        ideal = model["ideal_vs_ours_none"][name]
        vs_none = ratios["vs_ours_none"]["ttft"]["median"]
        papers = model["ratios"][name].get("vs_papers")
        rows = [("ttft ratio to ours none over the FLOPs ideal", vs_none / ideal, 1.10),
                ("ttft ratio to the papers' path", papers["ttft"]["median"] if papers else None, 0.70),
                ("ttft ratio to HF full", ratios["vs_hf_full"]["ttft"]["median"], 0.25)]
        for what, value, limit in rows:
            out.append({"contender": name, "what": what, "value": value, "limit": limit,
                        "met": value is not None and value <= limit})
    return out


def measure_model(name: str, args, guard) -> dict:
    from models.anyres import image_layout, is_anyres

    from bench_models import ensure_checkpoint
    from bench_ttft import NEXT_IMAGE_SIDE, register_scaled_spec

    register_scaled_spec()
    checkpoint = ensure_checkpoint(name)
    config = model_config(checkpoint)
    anyres = is_anyres(config)
    keeps = args.keeps or (QUICK_KEEPS if args.quick else KEEPS)[anyres]
    views = image_layout(config, (NEXT_IMAGE_SIDE, NEXT_IMAGE_SIDE)).views if anyres else 1
    common = {"threads": args.threads, "new_tokens": args.new_tokens, "prompt": PROMPT, "warmup": args.warmup}
    contenders = contenders_for(checkpoint, anyres, args.methods, keeps, args.work, common)
    run_rounds(contenders, args.rounds, guard, args.threads, label=name)
    by_name = {c.name: c for c in contenders}
    summaries = [summarize(c, args.threads) for c in contenders]
    ratios = {}
    for c in contenders:
        r = {"vs_hf_full": paired_ratio(c, by_name["HF full"]), "vs_ours_none": paired_ratio(c, by_name["ours none"])}
        if c.group == "ours" and c.method != "none":
            r["vs_papers"] = paired_ratio(c, by_name["papers" + c.name[len("ours"):]])
        ratios[c.name] = r
    model = {
        "model": name, "checkpoint": str(checkpoint), "architecture": config.architectures[0],
        "weights": "random (scripts/bench_models.py)" if name not in QUICK_MODELS else "built-in tiny checkpoint",
        "image": {"path": str(contenders[0].spec["image"]), "views": views},
        "shapes": {part: {k: getattr(getattr(config, part), k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
            for part in ("vision_config", "text_config")},
        "methods": list(args.methods), "keeps": list(keeps),
        "contenders": summaries, "ratios": ratios,
        "ideal_vs_ours_none": flops_ideal(config, summaries, views),
        "agreement": agreement(by_name),
    }
    model["targets"] = targets(model)
    return model


# ---- output ------------------------------------------------------------------------------------
def print_table(model: dict) -> None:
    print(f"\n{model['model']} ({model['image']['views']} view(s))")
    head = (f"{'contender':<22} {'tokens':>6} {'TTFT ms':>9} {'vision':>8} {'prefill':>8} {'tok/s':>7} "
            f"{'peak MiB':>9} {'/HF full':>9} {'/ours none':>10} {'ideal':>6}")
    print(head + "\n" + "-" * len(head))
    for s in model["contenders"]:
        r = model["ratios"][s["name"]]
        tps = s["decode_tokens_per_s"]
        print(f"{s['name']:<22} {s['keep']:>6} {s['ttft_s']['median'] * 1e3:>9.0f} {s['vision_s']['median'] * 1e3:>8.0f} "
              f"{s['prefill_s']['median'] * 1e3:>8.0f} {(tps['median'] if tps else float('nan')):>7.1f} "
              f"{s['peak_rss_mib']:>9.0f} {r['vs_hf_full']['ttft']['median']:>9.3f} "
              f"{r['vs_ours_none']['ttft']['median']:>10.3f} {model['ideal_vs_ours_none'][s['name']]:>6.3f}")
    for a in model["agreement"]:
        print(f"  {a['ours']} vs {a['peer']}: tokens {'equal' if a['tokens_equal'] else 'differ at %s' % a['first_token_mismatch']}"
              + (f", kept {'equal' if a['kept_equal'] else 'DIFFER'}" if "kept_equal" in a else ""))
    for t in model["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        print(f"  target {t['contender']}: {t['what']} = {value} (<= {t['limit']}): {'met' if t['met'] else 'NOT met'}")


GROUP_COLORS = {"hf_full": "tab:gray", "hf_papers": "tab:orange", "ours": "tab:blue"}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(15, 4.8 * len(models)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    for (ta, da), model in zip(axes, models):
        rows = model["contenders"]
        x = list(range(len(rows)))
        labels = [s["name"].replace(" K=", "\nK=") for s in rows]
        colors = [GROUP_COLORS[s["group"]] for s in rows]
        vis = [s["vision_s"]["median"] * 1e3 for s in rows]
        pre = [s["prefill_s"]["median"] * 1e3 for s in rows]
        ta.bar(x, vis, color=colors, alpha=0.45, label="vision")
        ta.bar(x, pre, bottom=vis, color=colors, label="prefill")
        med = [s["ttft_s"]["median"] * 1e3 for s in rows]
        ta.errorbar(x, med, yerr=[[m - s["ttft_s"]["min"] * 1e3 for m, s in zip(med, rows)],
                                  [s["ttft_s"]["max"] * 1e3 - m for m, s in zip(med, rows)]],
                    fmt="none", ecolor="black", capsize=3)
        ta.set_ylabel("time to first token, ms (median, min-max)\nlight: vision, dark: prefill")
        ta.set_xticks(x, labels, fontsize=7)
        ta.set_title(f"{model['model']}: TTFT, {report['threads']} threads, {report['rounds']} rounds")
        tps = [(s["decode_tokens_per_s"] or {"median": 0})["median"] for s in rows]
        da.bar(x, tps, color=colors)
        da.set_ylabel("decode tokens/s (median)")
        da.set_xticks(x, labels, fontsize=7)
        da.set_title("decode speed (grey: HF full, orange: papers' path, blue: ours)")
    fig.suptitle("edgeprune vs Hugging Face transformers and the papers' pruning path (CPU, fp32)"
                 + ("  [NOISY]" if report.get("noisy") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", help=f"default: {' '.join(MODELS)} (--quick: {' '.join(QUICK_MODELS)})")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--keeps", nargs="+", type=int, help="default 64 128 192 (LLaVA-NeXT: 640 320 160 per image)")
    p.add_argument("--rounds", type=int, help="default 9 (--quick: 2)")
    p.add_argument("--threads", type=int, default=2, help="threads of every contender (default 2)")
    p.add_argument("--new-tokens", type=int, help="decoded tokens per run (default 32; --quick: 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per contender before the rounds")
    p.add_argument("--work", type=Path, default=ROOT / "engines" / "peers", help="engine directories and images")
    p.add_argument("--out", type=Path, help=f"default {DEFAULT_OUT.relative_to(ROOT)} (--quick: WORK/peers_quick.json)")
    p.add_argument("--plot", type=Path, help="default: the JSON's path with .png")
    p.add_argument("--quick", action="store_true",
                   help="dry run: tiny models, one K per model, 2 rounds, 4 tokens, noisy allowed, output under --work")
    load_guard.add_arguments(p)
    args = p.parse_args(argv)
    args.models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    args.rounds = args.rounds or (2 if args.quick else 9)
    args.new_tokens = args.new_tokens or (4 if args.quick else 32)
    args.out = args.out or (args.work / "peers_quick.json" if args.quick else DEFAULT_OUT)
    args.plot = args.plot or args.out.with_suffix(".png")
    if args.rounds < 1 or args.threads < 1 or args.new_tokens < 2:
        print("error: --rounds and --threads must be >= 1 and --new-tokens >= 2", file=sys.stderr)
        return 2
    guard = load_guard.from_args(args)
    guard.allow_noisy = guard.allow_noisy or args.quick
    idle = guard.sample_idle()
    started = time.time()
    try:
        models = [measure_model(name, args, guard) for name in args.models]
    except WorkerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"benchmark": "TTFT, decode speed and peak RSS vs HF transformers and the papers' pruning path",
              "precision": "fp32", "threads": args.threads, "rounds": args.rounds, "new_tokens": args.new_tokens,
              "prompt": PROMPT, "quick": args.quick, "foreign_cores_idle_before": round(idle, 3),
              "duration_s": round(time.time() - started, 1), "models": models}
    guard.stamp(report, "scripts/bench_peers.py", argv)
    for model in models:
        print_table(model)
    try:
        guard.check()
    except load_guard.MachineBusy as exc:
        rejected = args.work / f"rejected-{args.out.stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        rejected.parent.mkdir(parents=True, exist_ok=True)
        rejected.write_text(json.dumps(report, indent=1))
        print(f"error: {exc} (the rejected result is in {rejected})", file=sys.stderr)
        return 3
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.plot)
    print(f"\nwrote {args.out} and {args.plot}" + ("  [NOISY]" if report["noisy"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
