"""The compiled plugin inside TensorRT-RTX, without a GPU: load the library, parse graphs with
the EdgePruneSelect node, build engines ahead of time (SM 8.0 target) and read the plugin's
fields back out of the serialized plan. Every TensorRT-RTX step runs in a child process
(plugins.rtx_check) because the parser aborts the process when `libtensorrt_rtx.so` is not on
LD_LIBRARY_PATH, which only a new process can be given (plugins.rtx_env)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exporter.pruning import make_config
from plugins import PLUGIN_NAME, rtx_env
from exporter.plugin_node import plugin_fields, plugin_selector

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX wheels are not installed")
ROOT = Path(__file__).resolve().parents[1]


def run_check(library: Path, onnx_path: Path, *extra: str, env: dict | None = None) -> tuple[dict, str]:
    child_env = dict(os.environ, **(env or {}))
    child_env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(rtx_env()), os.environ.get("LD_LIBRARY_PATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-m", "plugins.rtx_check", "--library", str(library), "--onnx", str(onnx_path), *extra],
        capture_output=True, text=True, env=child_env, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


def export_selector(cfg, path: Path) -> Path:
    selector = plugin_selector(cfg)
    plus = cfg.method == "hiprune++"

    class Graph(torch.nn.Module):
        def forward(self, rows, sim):
            return selector(rows, sim if plus else None)

    rows = torch.rand(2, len(cfg.layers), cfg.num_patches)
    sim = torch.rand(2, cfg.num_patches)
    torch.onnx.export(
        Graph(), (rows, sim), str(path), dynamo=False, opset_version=17,
        input_names=["rows", "sim"], output_names=["kept"],
        dynamic_axes={"rows": {0: "batch"}, "sim": {0: "batch"}, "kept": {0: "batch"}},
    )
    return path


def assert_plan_fields(result: dict, cfg) -> None:
    expected = plugin_fields(cfg)
    got = result["plan_fields"]
    assert set(got) == set(expected)
    for name, value in expected.items():
        values = value if isinstance(value, list) else [value]
        assert got[name] == pytest.approx(values, rel=1e-7), name


@pytest.mark.parametrize(
    "method, keep, params",
    [("hivtp", 128, {}), ("hiprune", 64, {"buffer_edges": "discard"}), ("hiprune++", 192, {"beta": 0.3})],
)
def test_engine_builds_with_plugin(plugin_library, tmp_path, method, keep, params):
    cfg = make_config(method, keep, **params)
    result, _ = run_check(plugin_library, export_selector(cfg, tmp_path / "sel.onnx"))
    assert result["loaded"] and result["creator_registered"]
    assert result["parsed"], result["parser_errors"]
    assert result["built"]
    assert {"name": "/EdgePruneSelect", "type": "PLUGIN_V3"} in result["layers"]
    assert result["io"]["rows"] == {"kind": "input", "shape": [-1, len(cfg.layers), 576], "dtype": "FLOAT"}
    assert result["io"]["kept"] == {"kind": "output", "shape": [-1, cfg.output_count], "dtype": "INT64"}
    assert ("sim" in result["io"]) == (method == "hiprune++")
    assert result["plan_mentions"][PLUGIN_NAME] and result["plan_mentions"]["edgeprune"]
    assert_plan_fields(result, cfg)
    assert not result["plan_embeds_library"]


def test_plugin_library_serialized_into_plan(plugin_library, tmp_path):
    """The Python form of trtexec --setPluginsToSerialize: the plan carries the library."""
    cfg = make_config("hiprune", 64)
    result, _ = run_check(plugin_library, export_selector(cfg, tmp_path / "sel.onnx"), "--serialize-library")
    assert result["built"] and result["plan_embeds_library"]
    assert result["plan_bytes"] > plugin_library.stat().st_size


def _with_attr(src: Path, dst: Path, **changes) -> Path:
    import onnx

    model = onnx.load(str(src))
    node = next(n for n in model.graph.node if n.op_type == PLUGIN_NAME)
    for attr in node.attribute:
        if attr.name in changes:
            value = changes[attr.name]
            if isinstance(value, list):
                del attr.ints[:]
                attr.ints.extend(value)
            else:
                attr.i = value
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"keep": 700}, "field 'keep' = 700 is out of range 1..576"),
        ({"method": 9}, "field 'method' = 9 is not a known method id"),
        ({"grid": [24, 23]}, "field 'grid' = 24x23 (552 patches) does not match the input length 576"),
        ({"num_anchors": 40}, "field 'num_anchors' = 40 is out of range 0..12"),
    ],
)
def test_bad_fields_fail_at_build_naming_the_field(plugin_library, tmp_path, changes, needle):
    cfg = make_config("hiprune", 64)
    good = export_selector(cfg, tmp_path / "good.onnx")
    result, stderr = run_check(plugin_library, _with_attr(good, tmp_path / "bad.onnx", **changes))
    assert not result.get("built", False)
    # TensorRT-RTX's logger finder hands plugins no logger, so the plugin writes to stderr;
    # under TensorRT the same line goes to the application's logger.
    assert needle in stderr + "\n".join(result["logs"])


def test_other_major_version_is_refused_cleanly(plugin_library, tmp_path):
    cfg = make_config("hiprune", 64)
    result, stderr = run_check(
        plugin_library, export_selector(cfg, tmp_path / "sel.onnx"), env={"EDGEPRUNE_PLUGIN_ASSUME_RUNTIME": "11"}
    )
    assert result["loaded"] is False and result["creator_registered"] is False
    assert "built against TensorRT 10.14 headers but is loaded by TensorRT 11.x" in stderr
    assert "python -m plugins build --tensorrt-include" in stderr


def test_rtx_env_links_the_wheel_library():
    import tensorrt_rtx_libs

    link = rtx_env() / "libtensorrt_rtx.so"
    assert link.resolve() == (Path(tensorrt_rtx_libs.__file__).parent / "libtensorrt_rtx.so.1").resolve()


def test_tiny_vision_graph_plugin_variant(plugin_library, tiny, tmp_path):
    """The lead's vision graph with the plugin selector: parse and build the full graph."""
    from exporter.onnx_export import export_vision_onnx

    cfg = make_config("hivtp", 64, num_layers=tiny.vision.vision_tower.config.num_hidden_layers)
    path = tmp_path / "vision.onnx"
    export_vision_onnx(tiny.vision, cfg, path, selector=plugin_selector(cfg))
    result, _ = run_check(plugin_library, path, "--batch", "1,2,2")
    assert result["parsed"], result["parser_errors"]
    assert result["built"]
    assert result["io"]["pixel_values"]["shape"] == [-1, 3, 336, 336]
    assert result["io"]["kept_indices"] == {"kind": "output", "shape": [-1, 64], "dtype": "INT64"}
    assert result["io"]["visual_features"]["shape"][:2] == [-1, 64]
    assert sum(layer["type"] == "PLUGIN_V3" for layer in result["layers"]) == 1
    assert_plan_fields(result, cfg)


def test_hiprune_plus_without_extra_tokens_builds_with_plugin(plugin_library, tiny, tmp_path):
    """K <= 25 gives t = 0: the graph has no text_embeds input, the plugin node gets zeros."""
    from exporter.onnx_export import export_vision_onnx

    cfg = make_config("hiprune++", 16, num_layers=tiny.vision.vision_tower.config.num_hidden_layers)
    assert cfg.num_extra == 0
    path = tmp_path / "vision.onnx"
    export_vision_onnx(tiny.vision, cfg, path, selector=plugin_selector(cfg))
    result, _ = run_check(plugin_library, path, "--batch", "1,1,2")
    assert result["parsed"], result["parser_errors"]
    assert result["built"]
    assert "text_embeds" not in result["io"]
    assert result["io"]["kept_indices"] == {"kind": "output", "shape": [-1, 16], "dtype": "INT64"}
