"""Command line of the exporter: `build` and `inspect`. Bad input is one line and exit 2."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from runtime.errors import EXIT_USER_ERROR, EdgePruneError, UserError, report, stdout_closed

from .pruning import METHODS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + line
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def _param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    if isinstance(parsed, list):
        parsed = tuple(parsed)
    return name.strip(), parsed


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m exporter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("build", help="export ONNX graphs and build engines into an engine directory")
    b.add_argument("--model", required=True, help="tiny-llava, tiny-llava-next, llava-1.5-7b, llava-1.5-13b, "
                   "llava-next-7b, a HF id or a checkpoint dir")
    b.add_argument("--keep", type=int, help="visual tokens kept per image (K; LLaVA-NeXT: "
                   "floor(K / views) per view); not needed for --method none")
    b.add_argument("--method", default="hivtp", choices=METHODS)
    b.add_argument("--param", action="append", type=_param, default=[], metavar="NAME=VALUE",
                   help="method parameter, e.g. alpha=0.2, layers=[6,7,8], buffer_edges=discard")
    b.add_argument("--random-weights", action="store_true", help="shape-exact random model from MODELS.md")
    b.add_argument("--precision", default="fp16", choices=("fp16", "fp32"))
    b.add_argument("--max-batch", type=int, default=1)
    b.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "tensorrt-rtx", "onnx"))
    b.add_argument("--selector", choices=("plugin", "onnx"), help="default: plugin when its library is built")
    b.add_argument("--text-tower", help="CLIP checkpoint (dir or HF id) for hiprune++")
    b.add_argument("--debug-scores", action="store_true", help="add the per-layer scores as an output")
    b.add_argument("--no-decoder", action="store_true", help="vision engine only")
    b.add_argument("--max-input-len", type=int,
                   help="decoder prompt limit incl. image tokens (default 1024; LLaVA-NeXT: "
                        "max(1024, image tokens + 512))")
    b.add_argument("--max-output-len", type=int, default=256)
    b.add_argument("--quantize", default="none", choices=("none", "int8", "int4"),
                   help="decoder weights (weight-only; activations stay fp16): int8 per output channel, "
                        "int4 per block of input channels")
    b.add_argument("--group-size", type=int, default=128, choices=(128, 64), help="int4 block size")
    b.add_argument("--calibration", default="rtn", choices=("rtn", "awq"),
                   help="rtn: round to nearest; awq: activation-aware scales (needs --calib-images)")
    b.add_argument("--calib-images", type=Path, metavar="DIR", help="AWQ calibration images")
    b.add_argument("--calib-prompts", type=Path, metavar="FILE", help="AWQ calibration prompts, one per line")
    b.add_argument("--quantize-lm-head", action="store_true", help="quantize lm_head too (default: fp16)")
    b.add_argument("--kv-cache", choices=("inplace", "concat"),
                   help="decoder KV cache: inplace (preallocated, updated in place; default) or concat "
                        "(default with TensorRT < 10.15)")
    b.add_argument("--target", choices=("orin-nano", "orin-nx", "agx-orin"),
                   help="warn when the engines will not fit this Jetson module")
    b.add_argument("--out", type=Path, help="engine directory (default: engines/<model>-<method>-k<K>)")
    b.add_argument("-v", "--verbose", action="store_true", help="show all of TensorRT's messages")

    i = sub.add_parser("inspect", help="print an engine directory's configuration")
    i.add_argument("dir", type=Path)
    i.add_argument("--verify", action="store_true", help="check every artifact's size and sha256 (no cache)")
    return parser


def _build(args) -> int:
    from .build import BuildOptions, build

    if args.method != "none" and args.keep is None:
        raise UserError(f"--keep is required for --method {args.method}")
    out = args.out or Path("engines") / f"{Path(args.model).name}-{args.method}-k{args.keep or 'all'}"
    build(BuildOptions(
        model=args.model, keep=args.keep, out=out, method=args.method,
        random_weights=args.random_weights, precision=args.precision, max_batch=args.max_batch,
        backend=args.backend, selector=args.selector, debug_scores=args.debug_scores,
        text_tower=args.text_tower, params=dict(args.param), decoder=not args.no_decoder,
        max_input_len=args.max_input_len, max_output_len=args.max_output_len,
        quantize=args.quantize, group_size=args.group_size, calibration=args.calibration,
        calib_images=args.calib_images, calib_prompts=args.calib_prompts, quantize_lm_head=args.quantize_lm_head,
        kv_cache=args.kv_cache, target=args.target, verbose=args.verbose,
        command=shlex.join(["python", "-m", "exporter", *sys.argv[1:]]),
    ))
    print(out)
    return 0


def _inspect(args) -> int:
    from runtime.contract import read_config

    config = read_config(args.dir)
    if args.verify:
        from runtime.contract import EngineDir
        from runtime.contract.verify import verify

        checked = verify(EngineDir(args.dir, config), use_cache=False)
        print(f"verified   {len(checked)} artifacts match config.json (size and sha256)")
    vision, pruning = config.vision, config.vision.pruning
    print(f"model      {config.model.name} ({config.model.source})")
    print(f"method     {pruning.method}  K={pruning.output_tokens}  params={pruning.params}")
    print(f"precision  {config.precision}  max batch {config.max_batch}  selector {vision.selector}"
          f" ({vision.selector_reason})")
    anyres = vision.anyres
    if anyres is not None:
        rows, cols = anyres.patch_grid
        budgets = ", ".join(f"{'/'.join(map(str, b.views))} views: {b.output}" for b in anyres.view_budgets)
        print(f"anyres     K={anyres.keep_per_image} per image  {budgets or f'all {rows * cols} per view'}  "
              f"merge {anyres.merge}  up to {anyres.max_tokens_per_image} tokens per image")
    engine = config.engine
    print(f"engine     {engine.backend} {engine.version}" if engine.built else f"engine     none ({engine.reason})")
    for kind, specs in (("input", vision.inputs), ("output", vision.outputs)):
        for t in specs:
            print(f"{kind:<10} {t.name:<16} {t.shape} {t.dtype}")
    text = config.text
    if text is not None:
        (ids,), (embeds,) = text.inputs, text.outputs
        print(f"text       {text.onnx}{' + ' + text.engine if text.engine else ''}  "
              f"{ids.name} {ids.shape} {ids.dtype} -> {embeds.name} {embeds.shape} {embeds.dtype}  "
              f"(up to {text.max_chunks} chunks, averaged)")
    print(f"decoder    {_decoder_line(config.decoder)}")
    if config.decoder is not None:
        from .memory_budget import lines

        print("\n".join(lines(args.dir, config)))
    for name, artifact in config.artifacts.items():
        print(f"artifact   {name}  {artifact.bytes} bytes  sha256:{artifact.sha256[:16]}")
    return 0


def _decoder_line(dec) -> str:
    if dec is None:
        return "no"
    q = dec.quantization or {"scheme": "none"}
    weights = q["scheme"] if q["scheme"] == "none" else \
        f"{q['scheme']}" + (f" g{q['group_size']}" if q.get("group_size") else "") + f" {q['calibration']['method']}"
    return (f"{dec.num_layers} layers, {dec.dtype}, K={dec.visual_tokens}  weights {weights}  KV cache {dec.kv_cache}  "
            f"max {dec.max_batch} x {dec.max_seq_len} tokens  opset {dec.onnx_opset}")


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return _build(args) if args.command == "build" else _inspect(args)
    except (EdgePruneError, KeyboardInterrupt) as exc:
        return report(exc, interrupted="interrupted; no engine directory was written")
    except BrokenPipeError:
        return stdout_closed()
