"""`python -m runtime eval`: what pruning costs on the user's own images, before deploying.

Each engine directory answers every line of a JSONL file through the server's own request path
(runtime/serve/service.py: an OpenAI chat request with the image as a data: URL, the batcher,
the same prompt and sampling handling), greedily. Reported per engine: accuracy by exact match
and by contains match, agreement of its answers with the first engine's (give the unpruned
`--method none` engine first to see what pruning changes), and time to first token.

Data lines, as in TensorRT-LLM's multimodal eval.py datasets (VQAv2 / AI2D / MME rows):
`{"image": "cat.jpg", "question": "What animal is this?", "answers": ["cat", "kitten"]}`;
`answers` may also be VQAv2's [{"answer": "cat"}, ...], or a single "answer" string. Image paths
are relative to the JSONL file. Matching follows that eval.py: the answer and the reply are
compared lower-cased and stripped; "contains" is its rule (an accepted answer occurs in the
reply), "exact" also needs nothing else in the reply but final punctuation.
"""
from __future__ import annotations

import asyncio
import base64
import json
import mimetypes
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError, one_line

PUNCTUATION = " \t\n.!?,;:\"'"


@dataclass(frozen=True)
class Item:
    line: int
    image: Path
    question: str
    answers: tuple[str, ...]


def normalise(text: str) -> str:
    return " ".join(text.strip().lower().split()).strip(PUNCTUATION)


def exact_match(reply: str, answers) -> bool:
    return normalise(reply) in {normalise(a) for a in answers}


def contains_match(reply: str, answers) -> bool:
    reply = normalise(reply)
    return any(normalise(a) and normalise(a) in reply for a in answers)


def _answers(row: dict, where: str) -> tuple[str, ...]:
    raw = row.get("answers", row.get("answer"))
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: needs \"answers\" (a list) or \"answer\" (a string)")
    out = []
    for a in raw:
        a = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(a, str):
            raise UserError(f"{where}: every answer must be a string or {{\"answer\": string}}")
        out.append(a)
    return tuple(out)


def read_data(path: Path, limit: int | None = None) -> list[Item]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--data {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --data {path}: {one_line(exc)}") from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("question"), str):
            raise UserError(f"{where}: needs \"image\" (a path) and \"question\" (a string)")
        image = (path.parent / row["image"]).resolve()
        if not image.is_file():
            raise UserError(f"{where}: image {row['image']} does not exist (paths are relative to the data file)")
        items.append(Item(n, image, row["question"], _answers(row, where)))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise UserError(f"--data {path} holds no lines")
    return items


def request_body(item: Item, model: str, max_tokens: int) -> dict[str, Any]:
    """The OpenAI chat request a client would send for this item (greedy)."""
    media = mimetypes.guess_type(item.image.name)[0] or "image/png"
    data = base64.b64encode(item.image.read_bytes()).decode("ascii")
    content = [{"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}},
               {"type": "text", "text": item.question}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0}


async def _answer_all(service, items: list[Item], max_tokens: int, concurrency: int) -> list[dict[str, Any]]:
    from .serve.protocol import ApiError

    gate = asyncio.Semaphore(concurrency)

    async def one(item: Item) -> dict[str, Any]:
        async with gate:
            try:
                _, response = await service.complete(request_body(item, service.model, max_tokens))
            except ApiError as exc:
                raise UserError(f"line {item.line}: the request was refused ({exc.status}): {exc.message}") from None
        facts = response["edgeprune"]
        return {"line": item.line, "reply": response["choices"][0]["message"]["content"],
                "ttft_s": facts["ttft_s"], "engine_ttft_s": facts["engine_ttft_s"],
                "visual_tokens": facts["visual_tokens"]}

    return list(await asyncio.gather(*(one(i) for i in items)))


def evaluate_engine(engine_dir: Path, items: list[Item], *, backend: str = "auto", threads: int = 0,
                    max_tokens: int = 32, concurrency: int = 1, verify: bool = True) -> dict[str, Any]:
    from .pipeline import Pipeline
    from .serve.service import ServeConfig, Service

    pipe = Pipeline.from_dir(engine_dir, backend, threads=threads, verify=verify)
    max_tokens = min(max_tokens, pipe.engine.decoder.max_output_len)
    service = Service(pipe, ServeConfig(model_name=Path(engine_dir).resolve().name, max_queue=max(64, concurrency),
                                          batch_window_s=0.005 if concurrency > 1 else 0.0))
    try:
        answers = asyncio.run(_answer_all(service, items, max_tokens, concurrency))
    finally:
        service.close()
    for item, a in zip(items, answers):
        a["exact"], a["contains"] = exact_match(a["reply"], item.answers), contains_match(a["reply"], item.answers)
    n = len(items)
    pruning = pipe.engine.vision.pruning
    return {"engine_dir": str(engine_dir), "method": pruning.method, "keep": pruning.keep,
            "backend": pipe.backends.describe(), "items": n,
            "exact": sum(a["exact"] for a in answers) / n, "contains": sum(a["contains"] for a in answers) / n,
            "ttft_s_median": statistics.median(a["ttft_s"] for a in answers),
            "engine_ttft_s_median": statistics.median(a["engine_ttft_s"] for a in answers),
            "visual_tokens_mean": statistics.fmean(a["visual_tokens"] for a in answers), "answers": answers}


def agreement(reference: list[dict], answers: list[dict]) -> float:
    return sum(normalise(a["reply"]) == normalise(r["reply"]) for r, a in zip(reference, answers)) / len(answers)


def table(results: list[dict[str, Any]]) -> str:
    head = f"{'engine':<28} {'method':<10} {'K':>5} {'tokens':>7} {'exact':>6} {'contains':>8} {'agree':>6} {'TTFT ms':>8}"
    rows = [head, "-" * len(head)]
    for r in results:
        name = Path(r["engine_dir"]).name[:28]
        rows.append(f"{name:<28} {r['method']:<10} {str(r['keep']):>5} {r['visual_tokens_mean']:>7.0f} "
                    f"{r['exact']:>6.3f} {r['contains']:>8.3f} {r['agreement']:>6.3f} {r['ttft_s_median'] * 1e3:>8.1f}")
    return "\n".join(rows)


def run_cli(args) -> int:
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {args.concurrency}")
    items = read_data(args.data, args.limit)
    results = []
    for engine_dir in args.engine_dir:
        print(f"evaluating {engine_dir} on {len(items)} items ...", file=sys.stderr, flush=True)
        results.append(evaluate_engine(engine_dir, items, backend=args.backend, threads=args.threads,
                                       max_tokens=args.max_tokens, concurrency=args.concurrency,
                                       verify=not args.no_verify))
    for r in results:
        r["agreement"] = agreement(results[0]["answers"], r["answers"])
    print(table(results))
    if args.json:
        payload = json.dumps({"data": str(args.data), "items": len(items), "max_tokens": args.max_tokens,
                              "agreement_reference": str(args.engine_dir[0]), "engines": results}, indent=1)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    return 0
