#!/usr/bin/env python
"""Writes every benchmark table of README.md from the committed JSON results.

    python scripts/readme_tables.py            # rewrite the marked sections of README.md
    python scripts/readme_tables.py --check    # exit 1 if README.md differs from the JSON

A generated section sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`; the
text in between belongs to this script (hand edits are overwritten). Each section ends with a
provenance line: the JSON file, machine, ONNX Runtime version, rounds and whether the load guard
saw other processes on the machine (a noisy result is marked as such).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def provenance(name: str, data: dict, runs: str) -> str:
    machine = data.get("machine") or {}
    ort = (data.get("versions") or {}).get("onnxruntime")
    where = ", ".join(filter(None, [machine.get("cpu"), f"{machine['cores']} cores" if machine.get("cores") else None,
                                    f"ONNX Runtime {ort}" if ort else None]))
    load = data.get("load")
    if load is None:
        quiet = "taken before the load guard existed: the machine's load was not recorded"
    elif data.get("noisy"):
        quiet = (f"**noisy**: other processes used up to {load['foreign_cores_max']:.2f} CPUs during the rounds "
                 f"(limit {load['max_foreign_cores']})")
    else:
        quiet = f"quiet machine (other processes used at most {load['foreign_cores_max']:.2f} CPUs in any round)"
    return f"`benchmarks/results/{name}`: {where or 'machine not recorded'}; {runs}; {quiet}."


def _rounds(data: dict, results: list[dict]) -> str:
    if data.get("rounds"):
        return f"median of {data['rounds']} alternating rounds"
    n = results[0].get("runs") or (results[0].get("ttft_s") or {}).get("n")
    return f"median of {n} runs" if n else "median"


# ---- tables -----------------------------------------------------------------------------------
def vision_table(data: dict) -> list[str]:
    lines = ["| method | K | vision graph (ms, median) | vs none | selection alone (ms) | selection share |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        sel = f"{r['selection_ms_median']:.3f}" if "selection_ms_median" in r else "-"
        share = f"{r['selection_share_percent']:.3f} %" if "selection_share_percent" in r else "-"
        lines.append(f"| {r['method']} | {r['keep']} | {r['vision_ms_median']:.0f} | {r['ratio_vs_none']:.3f} | "
                     f"{sel} | {share} |")
    return lines + ["", provenance("vision_cpu_fp32.json", data, _rounds(data, data["results"]))]


def _ms(stat: dict) -> str:
    """Median in ms, with the IQR when the spread is over 10 % of the median."""
    text = f"{stat['median'] * 1e3:.0f}"
    if stat.get("iqr", 0) > 0.1 * stat["median"]:
        text += f" (IQR {stat['iqr'] * 1e3:.0f})"
    return text


def ttft_table(name: str, k_label: str = "K") -> Callable[[dict], list[str]]:
    def render(data: dict) -> list[str]:
        results = data["results"]
        lines = [f"| method | {k_label} | TTFT (ms) | measured ratio | ideal (FLOPs) | decode vs none |",
                 "|---|---:|---:|---:|---:|---:|"]
        groups: dict[str, list[dict]] = {}
        for r in results:
            groups.setdefault(r["method"], []).append(r)
        for method, rows in groups.items():
            if method == "none":
                r = rows[0]
                lines.append(f"| none | {r['keep']} | {_ms(r['ttft_s'])} | 1 | 1 | 1.00x |")
                continue
            def join(key: str, fmt: str) -> str:
                return " / ".join(format(r[key], fmt) for r in rows)

            ttft = " / ".join(_ms(r["ttft_s"]) for r in rows)
            lines.append(f"| {method} | {join('keep', 'd')} | {ttft} | {join('ttft_ratio', '.3f')} | "
                         f"{join('ideal_ratio', '.3f')} | {join('decode_ratio', '.2f')}x |")
        return lines + ["", provenance(name, data, _rounds(data, results))]

    return render


def _ratio(r: dict | None) -> str:
    if not r:
        return "-"
    t = r["ttft"]
    if t["min"] == t["max"] == 1.0:  # the reference itself
        return "1"
    return f"{t['median']:.3f} ({t['min']:.2f}-{t['max']:.2f})"


def peers_table(file: str) -> Callable[[dict], list[str]]:
    """The side-by-side table of one bench_peers.py result (the full sweep, or a longer run at fewer K)."""
    def render(data: dict) -> list[str]:
        return _peers_lines(file, data)
    return render


def _peers_lines(file: str, data: dict) -> list[str]:
    lines = []
    for model in data["models"]:
        lines += [f"**{model['model']}** ({model['image']['views']} view{'s' if model['image']['views'] > 1 else ''}, "
                  f"{data['threads']} threads each, {data['new_tokens']} new tokens):", "",
                  "| contender | visual tokens | TTFT ms | vision + prefill ms | decode tok/s | peak RSS MiB | "
                  "vs HF full | vs ours none | FLOPs ideal |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in model["contenders"]:
            r = model["ratios"][s["name"]]
            tps = s["decode_tokens_per_s"]
            lines.append(
                f"| {s['name']} | {s['keep']} | {_ms(s['ttft_s'])} | {s['vision_s']['median'] * 1e3:.0f} + "
                f"{s['prefill_s']['median'] * 1e3:.0f} | {tps['median']:.1f} | {s['peak_rss_mib']:.0f} | "
                f"{_ratio(r['vs_hf_full'])} | {_ratio(r['vs_ours_none'])} | {model['ideal_vs_ours_none'][s['name']]:.3f} |")
        same = [a for a in model["agreement"] if a["tokens_equal"] and a.get("kept_equal", True)]
        lines += ["", f"Same weights, same tokens: {len(same)} of {len(model['agreement'])} pairs (ours none vs HF "
                  "full; ours vs the papers' path at each method and K) give identical kept indices and tokens."]
        differ = [a for a in model["agreement"] if a not in same]
        for a in differ:
            lines.append(f"{a['ours']} vs {a['peer']}: " + ("kept indices differ; " if not a.get("kept_equal", True) else "")
                         + (f"tokens part at position {a['first_token_mismatch']}." if not a["tokens_equal"] else ""))
        met = model["targets"]
        if met:
            lines.append("Targets at K = 128: " + "; ".join(
                f"{t['contender']} {t['what']} {t['value']:.3f} (<= {t['limit']}: {'met' if t['met'] else 'not met'})"
                for t in met if t["value"] is not None) + ".")
        lines.append("")
    return lines + [provenance(file, data, f"paired ratios: median (min-max) over {data['rounds']} "
                               "alternating rounds")]


def _load_range(values: list[list[float]]) -> str:
    """The 1-minute load averages recorded next to each row, as 'a-b' (these scripts predate the guard)."""
    firsts = [v[0] for v in values if v]
    return f"{min(firsts):.2f}-{max(firsts):.2f}" if firsts else "not recorded"


def decode_table(data: dict) -> list[str]:
    w, n = data["window"], data["new_tokens"]
    lines = [f"| weights | KV cache | decoder GB | TTFT ms | decode tok/s | tokens 1-{w} tok/s | "
             f"tokens {n - w + 1}-{n} tok/s | late slower by |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        m = r["median"]
        lines.append(f"| {r['quantize']} | {r['kv_cache']} | {r['decoder_bytes'] / 1e9:.2f} | {m['ttft_s'] * 1e3:.0f} | "
                     f"{m['decode_tps']:.1f} | {m['early_tps']:.1f} | {m['late_tps']:.1f} | "
                     f"{m['late_vs_early_slowdown']:+.0%} |")
    runs = len(data["results"][0].get("runs", [])) if data["results"] else 0
    what = (f"{data['model']} ({'random weights, ' if data.get('random_weights') else ''}{data['precision']}, "
            f"{data['method']} K={data['keep']}); \"late slower by\" compares seconds per token")
    return lines + ["", f"{what}. " + provenance("decode_cpu.json", data, f"median of {runs} runs of {n} new tokens each")]


def quant_export_table(data: dict) -> list[str]:
    lines = ["| weights | decoder.onnx.data GB | export wall time s | peak RSS GiB |", "|---|---:|---:|---:|"]
    for r in data["results"]:
        name = r["scheme"] + (f" (group {r['group_size']})" if r.get("group_size") else "")
        lines.append(f"| {name} | {r['decoder_gb']:.2f} | {r['seconds']:.0f} | {r['peak_rss_gib']:.2f} |")
    machine = data.get("machine") or {}
    return lines + ["", f"`benchmarks/results/quant_export_7b.json`: {data['model']} decoder, random weights, "
                    f"{data['precision']} activations, one child process per scheme; {machine.get('cpu', '?')}, "
                    f"{machine.get('cores', '?')} cores; 1-minute load average before each export "
                    f"{_load_range([r.get('loadavg_before') for r in data['results']])}."]


def serve_table(data: dict) -> list[str]:
    lines = ["| | requests/s | TTFT median ms | TTFT p90 ms | latency median ms | batch sizes seen |",
             "|---|---:|---:|---:|---:|---|"]
    for label in ("sequential", "concurrent"):
        r = data[label]
        lines.append(f"| {r['requests']} {label} | {r['requests_per_s']:.1f} | {r['ttft_median_s'] * 1e3:.0f} | "
                     f"{r['ttft_p90_s'] * 1e3:.0f} | {r['latency_median_s'] * 1e3:.0f} | "
                     f"{', '.join(map(str, r['batch_sizes']))} |")
    machine = data.get("machine") or {}
    same = "identical" if data.get("concurrent_equals_sequential") else "NOT identical"
    return lines + ["", f"Batching gain {data['gain_requests_per_s']:.2f}x requests/s; the concurrent answers are "
                    f"{same} to the sequential ones. `benchmarks/results/serve_load_cpu.json`: "
                    f"{data['engine_dir'].rsplit('/', 1)[-1]}, max batch {data['max_batch']}, {data['max_tokens']} tokens "
                    f"per request; {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
                    f"ONNX Runtime {(data.get('versions') or {}).get('onnxruntime')}; 1-minute load average "
                    f"{data['load_average_before'][0]:.2f} before, {data['load_average_after'][0]:.2f} after."]


SECTIONS: dict[str, tuple[str, Callable[[dict], list[str]]]] = {
    "vision": ("vision_cpu_fp32.json", vision_table),
    "ttft": ("ttft_cpu.json", ttft_table("ttft_cpu.json")),
    "ttft-next": ("ttft_next_cpu.json", ttft_table("ttft_next_cpu.json", "K per image")),
    "peers": ("peers_cpu.json", peers_table("peers_cpu.json")),
    "peers-k128": ("peers_k128_cpu.json", peers_table("peers_k128_cpu.json")),
    "decode": ("decode_cpu.json", decode_table),
    "quant-export": ("quant_export_7b.json", quant_export_table),
    "serve": ("serve_load_cpu.json", serve_table),
}


def render(name: str) -> str:
    file, fn = SECTIONS[name]
    data = _load(file)
    if data is None:
        return f"No result committed yet (`benchmarks/results/{file}`): run the command above on a quiet machine."
    return "\n".join(fn(data)).rstrip()


def update(text: str) -> str:
    for name in SECTIONS:
        pattern = re.compile(rf"(<!-- generated:{re.escape(name)} -->).*?(<!-- /generated:{re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            continue
        body = render(name)
        text = pattern.sub(lambda m: f"{m.group(1)}\n{body}\n{m.group(2)}", text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is not what the JSON gives")
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    old = args.readme.read_text()
    new = update(old)
    if args.check:
        if new != old:
            print(f"{args.readme} is out of date: run python scripts/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.readme.write_text(new)
        print(f"updated {args.readme}")
    else:
        print(f"{args.readme} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
