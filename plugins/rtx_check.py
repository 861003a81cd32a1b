"""Ahead-of-time TensorRT-RTX build of an ONNX graph holding the EdgePruneSelect node, run
in a child process: TensorRT-RTX's parser dlopens `libtensorrt_rtx.so` (see `plugins.rtx_env`)
and aborts the whole process when it is missing, which a test must survive and report.

    LD_LIBRARY_PATH=$(python -m plugins rtx-env) python -m plugins.rtx_check \
        --library plugins/build/trt10/libedgeprune_plugin.so --onnx model.onnx [--plan out.plan]

Prints one JSON object: parse/build success, the errors and log lines, the engine's I/O
tensors (from the network), and which plugin name/fields the serialized plan contains.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import PLUGIN_NAME, PLUGIN_NAMESPACE

FIELD_NAMES = (
    "method", "keep", "grid", "regions", "layers", "per_region_budget", "window", "global_fraction",
    "object_layer", "deep_layer", "buffer_edges", "num_anchors", "alpha", "num_extra", "beta",
)


def plan_fields(blob: bytes) -> dict[str, list]:
    """The plugin fields serialized in a plan (getFieldsToSerialize). Without a GPU the engine
    cannot be deserialized for the inspector, so this reads the plan bytes. Layout as observed
    with TensorRT-RTX 1.7.1: <u64 name length><name>, a short header, the type name
    ("INT32" / "FP32"), 6 bytes, <u64 byte length>, the little-endian values."""
    import re  # noqa: PLC0415
    import struct  # noqa: PLC0415

    out: dict[str, list] = {}
    for name in FIELD_NAMES:
        key = struct.pack("<Q", len(name)) + name.encode() + b"\x07\x80"
        at = blob.find(key)
        if at < 0:
            continue
        m = re.compile(rb"(INT32|FP32|FLOAT32)\x01\x80\x03\x80\x01\x00(.{8})", re.S).search(blob, at, at + len(key) + 96)
        if not m:
            continue
        size = struct.unpack("<Q", m.group(2))[0]
        data = blob[m.end() : m.end() + size]
        fmt = "i" if m.group(1) == b"INT32" else "f"
        out[name] = list(struct.unpack(f"<{size // 4}{fmt}", data))
    return out


def _logger(trt, sink: list[str]):
    class _Collect(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            sink.append(f"{severity.name}: {msg}")

    return _Collect()


def check(library: str, onnx_path: str, plan_path: str | None, batch: tuple[int, int, int], sm: str,
          serialize_library: bool) -> dict:
    import tensorrt_rtx_libs  # noqa: F401,PLC0415 - loads the shared libraries
    import tensorrt_rtx_bindings as trt  # noqa: PLC0415

    logs: list[str] = []
    logger = _logger(trt, logs)
    result: dict = {"tensorrt_rtx": trt.__version__, "library": library, "logs": logs}
    registry = trt.get_plugin_registry()
    try:
        handle = registry.load_library(library)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        handle = None
        result["load_exception"] = str(exc)
    result["loaded"] = handle is not None
    creators = [(c.name, c.plugin_version, c.plugin_namespace) for c in registry.all_creators]
    result["creator_registered"] = [PLUGIN_NAME, "1", PLUGIN_NAMESPACE] in [list(c) for c in creators]
    if handle is None:
        return result

    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(onnx_path)
    result["parsed"] = bool(ok)
    result["parser_errors"] = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
    if not ok:
        return result
    result["layers"] = [
        {"name": network.get_layer(i).name, "type": network.get_layer(i).type.name} for i in range(network.num_layers)
    ]
    io = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        io[t.name] = {"kind": "input", "shape": list(t.shape), "dtype": t.dtype.name}
    for i in range(network.num_outputs):
        t = network.get_output(i)
        io[t.name] = {"kind": "output", "shape": list(t.shape), "dtype": t.dtype.name}
    result["io"] = io

    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, sm), 0)
    if serialize_library:
        config.plugins_to_serialize = [library]
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shapes = [[b if d < 0 else d for d in t.shape] for b in batch]
        profile.set_shape(t.name, *shapes)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    result["built"] = plan is not None
    if plan is None:
        return result
    blob = bytes(plan)
    result["plan_bytes"] = len(blob)
    result["plan_mentions"] = {
        word: word.encode() in blob
        for word in (PLUGIN_NAME, PLUGIN_NAMESPACE, "keep", "grid", "method", "num_anchors", "layers", "window")
    }
    result["plan_fields"] = plan_fields(blob)
    result["plan_embeds_library"] = b"edgepruneBuildInfo" in blob
    if plan_path:
        Path(plan_path).write_bytes(blob)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plugins.rtx_check")
    ap.add_argument("--library", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--plan")
    ap.add_argument("--batch", default="1,2,4", help="min,opt,max batch of the profile")
    ap.add_argument("--sm", default="SM80", help="TensorRT-RTX ComputeCapability member")
    ap.add_argument("--serialize-library", action="store_true", help="embed the library (--setPluginsToSerialize)")
    args = ap.parse_args(argv)
    batch = tuple(int(x) for x in args.batch.split(","))
    result = check(args.library, args.onnx, args.plan, batch, args.sm, args.serialize_library)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
