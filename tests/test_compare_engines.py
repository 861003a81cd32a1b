"""scripts/compare_engines.py: the trtexec summary parser (fixtures in tests/fixtures/trtexec,
written after the documented format, see the README there), the commands it prints, and the
polygraphy comparison of a standard-op ONNX graph under ONNX Runtime with the PyTorch
reference, which runs here on the CPU."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.pruning import make_config, select_tokens, vectorized
from fakes.configs import engine_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "trtexec"
_spec = importlib.util.spec_from_file_location("compare_engines", ROOT / "scripts" / "compare_engines.py")
ce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ce)


def test_parse_trtexec_10_3():
    got = ce.parse_trtexec((FIXTURES / "trt10_3.txt").read_text())
    assert got["throughput_qps"] == 72.078
    assert got["gpu_compute_time_ms"] == {
        "min": 13.7712, "max": 14.1981, "mean": 13.8663, "median": 13.855, "p90": 13.9331, "p95": 13.9712, "p99": 14.102,
    }
    assert got["latency_ms"]["p99"] == 14.102
    assert got["enqueue_time_ms"]["mean"] == 0.0533
    assert got["h2d_latency_ms"]["max"] == 0.0 and got["d2h_latency_ms"]["median"] == 0.0
    assert got["total_host_walltime_s"] == 3.0245
    assert got["total_gpu_compute_time_s"] == 3.02285


def test_parse_trtexec_11():
    got = ce.parse_trtexec((FIXTURES / "trt11.txt").read_text())
    assert got["throughput_qps"] == 267.299
    assert got["gpu_compute_time_ms"]["median"] == 3.731
    assert got["gpu_compute_time_ms"]["p95"] == 3.7853
    assert got["enqueue_time_ms"]["min"] == 0.0031
    assert "h2d_latency_ms" not in got
    assert got["total_gpu_compute_time_s"] == 3.00097


def test_parse_trtexec_rejects_output_without_summary():
    with pytest.raises(ValueError, match="Performance summary"):
        ce.parse_trtexec("[I] Starting inference\n&&&& FAILED TensorRT.trtexec")


def test_parse_polygraphy_verdicts():
    text = (
        "[I] Comparing Output: 'kept_indices' (dtype=int64, shape=(1, 64)) with 'kept_indices'\n"
        "[I]         PASSED | Output: 'kept_indices' | Difference is within tolerance (rel=0, abs=0)\n"
        "[E]         FAILED | Output: 'visual_features' | Difference exceeds tolerance (rel=0.01, abs=0.01)\n"
        "[E]     FAILED | Mismatched outputs: ['visual_features']\n"
        "[E] FAILED | Runtime: 4.210s | Command: /usr/bin/polygraphy run vision.engine --trt\n"
    )
    assert ce.parse_polygraphy(text) == {"passed": False, "outputs": {"kept_indices": True, "visual_features": False}}


CONFIG = engine_config({
    "onnx": "vision.onnx",
    "engine": "vision.engine",
    "selector": "plugin",
    "plugin": {"library": "/opt/edgeprune/libedgeprune_plugin.so", "fields": {}},
    "inputs": [
        {"name": "pixel_values", "shape": [-1, 3, 336, 336], "dtype": "float16"},
        {"name": "text_embeds", "shape": [-1, -2], "dtype": "float32"},
    ],
}).vision


def test_trtexec_command_for_10_and_11():
    shapes = ce.input_shapes(CONFIG, 2, {"text_embeds": [2, 768]})
    cmd10 = ce.trtexec_command(Path("/e"), CONFIG, shapes, 10)
    assert cmd10 == [
        "trtexec", "--loadEngine=/e/vision.engine", "--dynamicPlugins=/opt/edgeprune/libedgeprune_plugin.so",
        "--shapes=pixel_values:2x3x336x336,text_embeds:2x768", "--useCudaGraph", "--noDataTransfers", "--useSpinWait",
    ]
    assert ce.trtexec_command(Path("/e"), CONFIG, shapes, 11) == cmd10[:4]
    with pytest.raises(ValueError, match="text_embeds"):
        ce.input_shapes(CONFIG, 1)


def test_polygraphy_commands_share_inputs(tmp_path):
    shapes = {"pixel_values": [1, 3, 336, 336]}
    ort, trt = ce.polygraphy_commands(Path("/e"), CONFIG, shapes, tmp_path)
    assert ort[:4] == ["polygraphy", "run", "/e/vision.onnx", "--onnxrt"]
    assert "pixel_values:[1,3,336,336]" in ort
    assert ort[ort.index("--save-inputs") + 1] == trt[trt.index("--load-inputs") + 1]
    assert ort[ort.index("--save-outputs") + 1] == trt[trt.index("--load-outputs") + 1]
    assert trt[trt.index("--plugins") + 1] == "/opt/edgeprune/libedgeprune_plugin.so"
    assert "kept_indices:0.0" in trt and "--model-type" in trt


@pytest.fixture
def standard_selection_graph(tmp_path):
    """A standard-op selection graph (what the ONNX Runtime path runs) for hiprune, K=64."""
    cfg = make_config("hiprune", 64)

    class Graph(torch.nn.Module):
        def forward(self, rows):
            return vectorized.select(cfg, rows)

    path = tmp_path / "select.onnx"
    torch.onnx.export(Graph(), (torch.rand(2, 2, 576),), str(path), dynamo=False, opset_version=17,
                      input_names=["rows"], output_names=["kept_indices"],
                      dynamic_axes={"rows": {0: "b"}, "kept_indices": {0: "b"}})
    return cfg, path


@pytest.mark.skipif(shutil.which("polygraphy") is None, reason="polygraphy CLI not installed")
def test_polygraphy_ort_matches_pytorch_reference(standard_selection_graph, tmp_path):
    cfg, path = standard_selection_graph
    gen = torch.Generator().manual_seed(11)
    scores = torch.rand(3, 24, 577, generator=gen)
    scores[2] = (scores[2] * 4).floor() / 4  # ties everywhere: the tie rule must hold in ORT too
    rows = scores[:, list(cfg.layers), 1:].contiguous()
    reference = select_tokens("hiprune", scores, 64).numpy()
    inputs, outputs = ce.save_reference({"rows": rows.numpy()}, {"kept_indices": reference}, tmp_path)
    result = ce.run_polygraphy(ce.ort_vs_reference_command(path, inputs, outputs))
    assert result == {"passed": True, "outputs": {"kept_indices": True}, "returncode": 0}

    wrong = reference.copy()
    wrong[0, 0] += 1  # one index off must fail with atol 0
    inputs, outputs = ce.save_reference({"rows": rows.numpy()}, {"kept_indices": wrong}, tmp_path)
    result = ce.run_polygraphy(ce.ort_vs_reference_command(path, inputs, outputs))
    assert result["passed"] is False and result["outputs"] == {"kept_indices": False}
    assert np.array_equal(select_tokens("hiprune", scores, 64).numpy(), reference)


ANYRES_CONFIG = engine_config({
    "onnx": "vision.onnx",
    "engine": "vision.engine",
    "selector": "onnx",
    "inputs": [
        {"name": "pixel_values", "shape": [-1, 3, 336, 336], "dtype": "float16"},
        {"name": "view_budget", "shape": [-1], "dtype": "int64"},
    ],
    "anyres": {
        "image_grid_pinpoints": [[336, 672], [672, 672]], "view_size": 336, "patch_grid": [24, 24],
        "layouts": [{"pinpoint": [336, 672], "rows": 1, "cols": 2, "views": 3},
                    {"pinpoint": [672, 672], "rows": 2, "cols": 2, "views": 5}],
        "max_views": 5, "keep_per_image": 640, "view_rule": "K_view = floor(K / n_views)",
        "view_budgets": [{"views": [3], "keep": 213, "output": 213}, {"views": [5], "keep": 128, "output": 128}],
        "merge": "spatial", "image_newline": None, "order": "test", "max_tokens_per_image": 640,
    },
})


def test_anyres_commands_feed_views_and_a_built_budget(tmp_path):
    """V = batch * views; every view gets that view count's K_view (trtexec from a raw int64
    file, polygraphy from a one-value range)."""
    assert ce.views_per_image(ANYRES_CONFIG.vision) == 3 and ce.views_per_image(ANYRES_CONFIG.vision, 5) == 5
    with pytest.raises(ValueError, match="--views 4: this engine's layouts have 3, 5 views"):
        ce.views_per_image(ANYRES_CONFIG.vision, 4)
    with pytest.raises(ValueError, match="anyres"):
        ce.views_per_image(CONFIG, 3)
    assert ce.views_per_image(CONFIG) == 1
    row = ce.compare_config(ANYRES_CONFIG, Path("/e"), batch=2, run=False, overrides={}, work=tmp_path, views=5)
    assert row["views_per_image"] == 5 and row["view_budget"] == 128
    assert "--shapes=pixel_values:10x3x336x336,view_budget:10" in row["trtexec_command"]
    assert f"--loadInputs=view_budget:{tmp_path / 'view_budget.bin'}" in row["trtexec_command"]
    assert np.fromfile(tmp_path / "view_budget.bin", dtype="<i8").tolist() == [128] * 10
    assert "--val-range 'view_budget:[128,128]'" in row["polygraphy_commands"][0]


def test_run_json_prints_only_json_and_leaves_no_folders(engine, tmp_path):
    """Without TensorRT, --run compares ONNX Runtime with the PyTorch graph; stdout must be one
    JSON document and the working folder must be gone."""
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_engines.py"), engine, "--run", "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert row["polygraphy_ort_vs_torch"]["passed"] is True
    assert list(tmp_path.iterdir()) == []
