"""`python -m runtime generate|bench|serve|eval`. User errors print one line and exit 2, never a traceback;
usage errors are one line too. stderr says which backend ran vision and decoder, and why."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .backends import BACKENDS
from .errors import EXIT_USER_ERROR, EdgePruneError, UserError, report, stdout_closed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + line
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m runtime", description="run an edgeprune engine directory")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="answer a prompt about an image, streaming text to stdout")
    g.add_argument("--engine-dir", required=True, type=Path)
    g.add_argument("--image", required=True, action="append", help="repeat for a batch")
    g.add_argument("--prompt", required=True, action="append", help="one, or one per --image")
    g.add_argument("--max-new-tokens", type=int, help="default: 64, capped by the engine's --max-output-len")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", default="auto", choices=BACKENDS)
    g.add_argument("--trtllm-engine-dir", type=Path, help="decode with this TensorRT-LLM engine instead")
    g.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    g.add_argument("--no-verify", action="store_true",
                   help="skip checking the engine directory's files against config.json's sha256")
    b = sub.add_parser("bench", help="TTFT, decode tokens/s and peak memory per engine directory")
    b.add_argument("--engine-dir", required=True, nargs="+", type=Path)
    b.add_argument("--backend", default="auto", choices=BACKENDS)
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--new-tokens", type=int, default=32)
    b.add_argument("--prompt", default="Describe the picture in detail.")
    b.add_argument("--image", help="image file (default: a synthetic 336 x 336 image)")
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--json", nargs="?", const="-", help="write results as JSON (to FILE, or stdout)")
    b.add_argument("--plot", type=Path, help="save a bar chart (PNG)")
    b.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the engine directories")
    from .serve.main import add_arguments

    add_arguments(sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs the `serve` extra)"), BACKENDS)
    e = sub.add_parser("eval", help="accuracy, agreement and TTFT of engine directories on a JSONL data set")
    e.add_argument("--engine-dir", required=True, action="append", type=Path, help="repeat to compare engines; "
                   "agreement is measured against the first")
    e.add_argument("--data", required=True, type=Path, help="JSONL: image, question, answers per line")
    e.add_argument("--max-tokens", type=int, default=32)
    e.add_argument("--limit", type=int, help="only the first N lines")
    e.add_argument("--concurrency", type=int, default=1, help="requests in flight (1: each alone, so TTFT is "
                   "the engine's own; more: batched as the server would)")
    e.add_argument("--backend", default="auto", choices=BACKENDS)
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--json", nargs="?", const="-", help="write results as JSON (to FILE, or stdout)")
    e.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the engine directories")
    return p


def _generate(args) -> int:
    from .pipeline import Pipeline

    if len(args.prompt) not in (1, len(args.image)):
        raise UserError(f"give one --prompt or one per --image ({len(args.image)} images, {len(args.prompt)} prompts)")
    pipe = Pipeline.from_dir(args.engine_dir, args.backend, threads=args.threads,
                             trtllm_engine_dir=args.trtllm_engine_dir, verify=not args.no_verify)
    single = len(args.image) == 1
    images = args.image[0] if single else args.image
    prompts = args.prompt[0] if len(args.prompt) == 1 else args.prompt
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.json:
        out = pipe.generate(images, prompts, **kw)
        backends = {"backend": pipe.backend, "backends": {"vision": pipe.backends.vision,
                                                          "decoder": pipe.backends.decoder,
                                                          "reason": pipe.backends.reason}}
        payload = {**out.as_dict(), **backends} if single else [o.as_dict() for o in out]
        print(json.dumps(payload))
    elif not single:
        for i, gen in enumerate(pipe.generate(images, prompts, **kw)):
            print(f"[{i}] {gen.text}")
    else:
        for chunk in pipe.stream(images, prompts, **kw):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
    # said once the generation ran, so that bad input still gets exactly one stderr line
    print(f"backend: {pipe.backends.describe()}", file=sys.stderr, flush=True)
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "generate":
            return _generate(args)
        if args.cmd == "serve":
            from .serve.main import run_cli
        elif args.cmd == "eval":
            from .evaluate import run_cli
        else:
            from .bench import run_cli

        return run_cli(args)
    except (EdgePruneError, KeyboardInterrupt) as exc:
        return report(exc)
    except BrokenPipeError:
        return stdout_closed()
