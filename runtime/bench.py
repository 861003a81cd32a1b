"""`python -m runtime bench`: time to first token (vision + prefill), decode tokens/s and peak
memory per engine directory, as median and spread over several runs.

Each engine directory is measured in its own child process: peak RSS is a per-process high-water
mark, so measuring several engines in one process would report the largest for all of them.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import UserError
from .optional import need


def _stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "min": values[0], "max": values[-1],
            "iqr": q[2] - q[0], "n": len(values)}


def _default_image():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).resize((336, 336), Image.NEAREST)


def _progress(iterable, desc: str):
    """tqdm where installed (the export extra), else the plain iterable."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, unit="run", leave=False)


def bench_one(engine_dir: str, backend: str, runs: int, warmup: int, new_tokens: int, prompt: str,
              image: str | None, threads: int, verify: bool = True) -> dict[str, Any]:
    from .pipeline import Pipeline

    pipe = Pipeline.from_dir(engine_dir, backend, threads=threads, verify=verify)
    img = image if image else _default_image()
    new_tokens = min(new_tokens, pipe.engine.decoder.max_output_len)
    ttft, vision, prefill, tps = [], [], [], []
    for i in _progress(range(warmup + runs), Path(engine_dir).name):
        gen = pipe.generate(img, prompt, max_new_tokens=new_tokens, ignore_eos=True)
        if i < warmup:
            continue
        t = gen.timings
        ttft.append(t.ttft_s)
        vision.append(t.vision_s)
        prefill.append(t.prefill_s)
        if t.decode_tokens_per_s is not None:
            tps.append(t.decode_tokens_per_s)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    visual = gen.visual_tokens  # the image's own count (LLaVA-NeXT: depends on its layout)
    return {
        "engine_dir": str(engine_dir), "backend": pipe.backend, "method": pipe.engine.vision.pruning.method,
        "keep": visual, "prompt_tokens": gen.prompt_tokens,
        "new_tokens": new_tokens, "ttft_s": _stats(ttft), "vision_s": _stats(vision), "prefill_s": _stats(prefill),
        "decode_tokens_per_s": _stats(tps) if tps else None, "peak_rss_mib": round(peak_kib / 1024, 1),
        "threads": threads or os.cpu_count(),
    }


def bench(engine_dirs: list[str], backend: str = "auto", runs: int = 5, warmup: int = 1, new_tokens: int = 32,
          prompt: str = "Describe the picture in detail.", image: str | None = None, threads: int = 0,
          verify: bool = True) -> list[dict]:
    """One child process per engine directory (see the module docstring)."""
    if runs < 1 or warmup < 0:
        raise UserError(f"--runs must be at least 1 and --warmup at least 0, got {runs} and {warmup}")
    results = []
    for d in engine_dirs:
        spec = json.dumps([str(d), backend, runs, warmup, new_tokens, prompt, image, threads, verify])
        code = "import json,sys; from runtime.bench import bench_one; print(json.dumps(bench_one(*json.loads(sys.argv[1]))))"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                           os.environ.get("PYTHONPATH", "")]))
        res = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["failed"])[-1]
            raise UserError(f"benchmark of {d} failed: {last}")
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return results


def table(results: list[dict]) -> str:
    head = f"{'engine':<34} {'method':<9} {'K':>4} {'TTFT ms (med ± IQR)':>22} {'vision ms':>10} " \
           f"{'prefill ms':>11} {'decode tok/s':>14} {'peak MiB':>9}"
    lines = [head, "-" * len(head)]
    for r in results:
        tps = r["decode_tokens_per_s"]
        lines.append(
            f"{Path(r['engine_dir']).name[:34]:<34} {r['method'] or '-':<9} {r['keep']:>4} "
            f"{r['ttft_s']['median'] * 1e3:>13.1f} ± {r['ttft_s']['iqr'] * 1e3:>6.1f} "
            f"{r['vision_s']['median'] * 1e3:>10.1f} {r['prefill_s']['median'] * 1e3:>11.1f} "
            f"{(tps['median'] if tps else float('nan')):>14.1f} {r['peak_rss_mib']:>9.0f}")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str = "edgeprune: time to first token and decode speed") -> None:
    matplotlib = need("matplotlib", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['method']}\nK={r['keep']}" for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(results) + 4), 4.5))
    x = range(len(results))
    vis = [r["vision_s"]["median"] * 1e3 for r in results]
    pre = [r["prefill_s"]["median"] * 1e3 for r in results]
    a.bar(x, vis, label="vision")
    a.bar(x, pre, bottom=vis, label="prefill")
    a.errorbar(x, [r["ttft_s"]["median"] * 1e3 for r in results],
               yerr=[[(r["ttft_s"]["median"] - r["ttft_s"]["min"]) * 1e3 for r in results],
                     [(r["ttft_s"]["max"] - r["ttft_s"]["median"]) * 1e3 for r in results]],
               fmt="none", ecolor="black", capsize=3)
    a.set_ylabel("TTFT (ms, median, min-max)")
    a.set_xticks(list(x), labels, fontsize=8)
    a.legend()
    tps = [(r["decode_tokens_per_s"] or {"median": 0})["median"] for r in results]
    b.bar(x, tps, color="tab:green")
    b.set_ylabel("decode tokens/s (median)")
    b.set_xticks(list(x), labels, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _writable(path: Path | str | None, what: str) -> None:
    """A result path must be writable before minutes of measuring are spent."""
    if path is None or str(path) == "-":
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{what} {path} is not writable")


def run_cli(args) -> int:
    _writable(args.json, "--json")
    _writable(args.plot, "--plot")
    if args.plot:
        need("matplotlib", "--plot")  # before minutes of measuring
    results = bench([str(d) for d in args.engine_dir], args.backend, args.runs, args.warmup, args.new_tokens,
                    args.prompt, args.image, args.threads, not args.no_verify)
    to_stdout = args.json == "-"
    print(table(results), file=sys.stderr if to_stdout else sys.stdout)
    if args.json:
        text = json.dumps({"results": results}, indent=1)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text)
    if args.plot:
        plot(results, args.plot)
    return 0
