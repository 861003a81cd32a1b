#!/usr/bin/env python
"""The batching gain of `python -m runtime serve`: 32 concurrent streamed requests (different
images and prompts, greedy) against the same 32 sent one after another, through the official
`openai` client on loopback.

Reported: requests/s of each way, time to first token (first streamed text, as the client sees
it: queueing, image decoding, vision and prefill) median / p90 / max, and the gain (concurrent
requests/s over sequential). Every concurrent answer must equal its sequential one token for token
(the server's batch == single guarantee) and no request may fail. The engine directory defaults
to the built-in tiny-llava, hivtp K=64, max batch 8, built once under ~/.cache/edgeprune.

    python scripts/bench_serve.py                                   # the measurement (quiet machine)
    python scripts/bench_serve.py --requests 4 --max-tokens 2 --out /tmp/serve.json   # dry run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = ("What is in the picture?", "Describe the image.", "How many objects are there?", "Is the path clear?",
           "Where is the red box?", "What colour is the wall?", "Count the cups.", "What is on the left?")
CACHE = Path(os.environ.get("EDGEPRUNE_CACHE", Path.home() / ".cache" / "edgeprune")) / "bench-serve"


def build_engine(max_batch: int) -> Path:
    from exporter.cli import main as exporter

    out = CACHE / f"tiny-llava-hivtp-k64-b{max_batch}"
    if not (out / "config.json").exists():
        code = exporter(["build", "--model", "tiny-llava", "--method", "hivtp", "--keep", "64", "--max-batch",
                         str(max_batch), "--backend", "onnx", "--precision", "fp32", "--out", str(out)])
        if code:
            raise SystemExit(code)
    return out


def write_images(root: Path, count: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(17)
    paths = []
    for i in range(count):
        h, w = int(rng.integers(240, 640)), int(rng.integers(240, 640))
        blocks = rng.integers(0, 255, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
        paths.append(root / f"img{i}.png")
        Image.fromarray(blocks).resize((w, h), Image.NEAREST).save(paths[-1])
    return paths


def one(client, model: str, image: Path, prompt: str, max_tokens: int) -> dict:
    """One streamed request: TTFT, latency, text, token ids (the final chunk's edgeprune field)."""
    import base64

    url = f"data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()}"
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                              {"type": "text", "text": prompt}]}]
    t0 = time.perf_counter()
    first, parts, facts = None, [], None
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta.content
        if delta and first is None:
            first = time.perf_counter() - t0
        parts.append(delta or "")
        facts = (chunk.model_extra or {}).get("edgeprune") or facts
    latency = time.perf_counter() - t0
    return {"ttft_s": first if first is not None else latency, "latency_s": latency, "text": "".join(parts),
            "token_ids": facts["token_ids"], "batch_size": facts["batch_size"],
            "engine_ttft_s": facts["engine_ttft_s"]}


def summary(rows: list[dict], wall: float) -> dict:
    ttft = sorted(r["ttft_s"] for r in rows)
    return {"requests": len(rows), "wall_s": wall, "requests_per_s": len(rows) / wall,
            "ttft_median_s": statistics.median(ttft), "ttft_p90_s": ttft[int(0.9 * (len(ttft) - 1))],
            "ttft_max_s": ttft[-1], "latency_median_s": statistics.median(r["latency_s"] for r in rows),
            "batch_sizes": sorted({r["batch_size"] for r in rows}),
            "tokens": sum(len(r["token_ids"]) for r in rows)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", type=Path, help="default: tiny-llava hivtp K=64 with --max-batch (built once)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch-window-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=0, help="the server's ONNX Runtime threads (0 = all cores)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load_cpu.json")
    args = p.parse_args(argv)

    import openai

    from load_guard import machine
    from runtime.serve.process import ServerProcess

    engine = args.engine_dir or build_engine(args.max_batch)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    images = write_images(work, args.requests)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    load_before = os.getloadavg()
    with ServerProcess(engine, "--threads", str(args.threads), "--batch-window-ms", str(args.batch_window_ms),
                       "--max-queue", str(max(64, args.requests)), log_path=work / "server.log", cwd=ROOT) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        for i in range(2):  # warm-up: sessions, arenas, both batch shapes
            one(client, model, images[i], prompts[i], args.max_tokens)
        t0 = time.perf_counter()
        sequential = [one(client, model, images[i], prompts[i], args.max_tokens) for i in range(args.requests)]
        sequential_wall = time.perf_counter() - t0
        with ThreadPoolExecutor(args.requests) as pool:
            t0 = time.perf_counter()
            concurrent = list(pool.map(lambda i: one(client, model, images[i], prompts[i], args.max_tokens),
                                       range(args.requests)))
            concurrent_wall = time.perf_counter() - t0
        health = json.loads(__import__("urllib.request").request.urlopen(srv.url + "/health").read())
    mismatches = [i for i, (s, c) in enumerate(zip(sequential, concurrent)) if s["token_ids"] != c["token_ids"]]
    seq, con = summary(sequential, sequential_wall), summary(concurrent, concurrent_wall)
    import fastapi
    import onnxruntime
    import uvicorn

    result = {
        "benchmark": "serve_load", "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "versions": {"python": sys.version.split()[0], "onnxruntime": onnxruntime.__version__,
                     "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__, "openai": openai.__version__},
        "engine_dir": str(engine), "engine": json.loads((Path(engine) / "config.json").read_text())["vision"]["pruning"],
        "max_batch": health["max_batch"], "requests": args.requests, "max_tokens": args.max_tokens,
        "batch_window_ms": args.batch_window_ms, "server_threads": args.threads,
        "sequential": seq, "concurrent": con,
        "gain_requests_per_s": con["requests_per_s"] / seq["requests_per_s"],
        "concurrent_equals_sequential": not mismatches, "mismatched_requests": mismatches,
        "server_health": health,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"sequential: {seq['requests_per_s']:.2f} req/s, TTFT median {seq['ttft_median_s'] * 1e3:.0f} ms; "
          f"concurrent: {con['requests_per_s']:.2f} req/s, TTFT median {con['ttft_median_s'] * 1e3:.0f} ms "
          f"(p90 {con['ttft_p90_s'] * 1e3:.0f}); gain {result['gain_requests_per_s']:.2f}x; "
          f"batches up to {health['largest_batch']}; equal answers: {not mismatches} -> {args.out}")
    return 0 if not mismatches else 1


if __name__ == "__main__":
    raise SystemExit(main())
