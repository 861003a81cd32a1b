"""SCOPE and VisionZip in the exported vision graph: ONNX Runtime against the references on the
HF tower's own tensors (identical indices, features within 1e-4 in fp32) for LLaVA-1.5 and the
branched LLaVA-NeXT graph, what the graph computes (one Loop, only the CLS row), TensorRT-RTX
ahead-of-time builds, and bad input at the command line."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch

from exporter.anyres_plan import plan_anyres
from exporter.cli import main
from exporter.onnx_export import export_anyres_vision_onnx, export_vision_onnx
from exporter.pruning import make_config, select_tokens, visionzip
from exporter.pruning.hf_inputs import cls_row_inputs

CASES = [("scope", 1), ("scope", 64), ("scope", 192), ("scope", 100, {"alpha": 0.5}),
         ("visionzip", 2), ("visionzip", 64), ("visionzip", 192), ("visionzip", 32, {"contextual": 5})]


def _reference(projector, taps, cfg, views=None):
    """(kept (B, K) int64, visual (B, K, H)) from the references on the HF tower's tensors."""
    views = range(taps.cls_scores.shape[0]) if views is None else views
    kept, rows = [], []
    for v in views:
        one = slice(v, v + 1)
        if cfg.method == "scope":
            k = select_tokens("scope", None, cfg.keep, cls_scores=taps.cls_scores[one], features=taps.patches[one],
                              **cfg.params)
            kept.append(k[0])
            rows.append(taps.patches[v, k[0]])
        else:
            z = visionzip(cls_scores=taps.cls_scores[one], hidden_states=taps.hidden_states[one], keys=taps.keys[one],
                          dominant=cfg.dominant, contextual=cfg.contextual)
            kept.append(torch.cat([torch.tensor([-1]), z.dominant[0], z.targets[0]]))
            rows.append(z.tokens[0])
    with torch.no_grad():
        return torch.stack(kept), projector(torch.stack(rows))


@pytest.fixture(scope="module")
def taps(tiny, tiny_reference):
    return cls_row_inputs(tiny.vision.vision_tower, tiny_reference["pixels"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[:2])))
def test_onnxruntime_matches_references(tmp_path, tiny, tiny_reference, taps, case):
    import onnx
    import onnxruntime as ort

    method, keep, params = case[0], case[1], (case[2] if len(case) > 2 else {})
    cfg = make_config(method, keep, **params)
    path = tmp_path / "vision.onnx"
    io = export_vision_onnx(tiny.vision, cfg, path, debug_scores=True)
    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert not set(ops) & {"NonZero", "ScatterElements", "ScatterND"}
    # Only the CLS row of layer 23 is averaged over heads (VisionZip: and its keys); no other
    # layer's probabilities are reduced, i.e. none is kept beyond its fused attention.
    assert ops["ReduceMean"] == (1 if method == "scope" else 2)
    assert ops["Loop"] == (1 if method == "scope" else 0)
    if method == "scope":
        loop = next(n for n in model.graph.node if n.op_type == "Loop")
        consts = {o: n for n in model.graph.node if n.op_type == "Constant" for o in n.output}
        trip = onnx.numpy_helper.to_array(consts[loop.input[0]].attribute[0].t)
        assert int(trip) == keep
    names = [o.name for o in model.graph.output]
    assert names == io.output_names
    assert names == ["visual_features", "kept_indices", "cls_scores"] + (["token_assignment"] if method == "visionzip" else [])

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        got = session.run(None, {"pixel_values": tiny_reference["pixels"][:batch].numpy()})
        visual, kept, cls = got[:3]
        ref_kept, ref_visual = _reference(tiny.vision.projector, taps, cfg, range(batch))
        assert kept.dtype == np.int64 and kept.shape == (batch, keep)
        np.testing.assert_array_equal(kept, ref_kept.numpy())
        np.testing.assert_allclose(visual, ref_visual.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(cls, taps.cls_scores[:batch].numpy(), atol=1e-5, rtol=0)
        if method == "visionzip":
            z = visionzip(cls_scores=taps.cls_scores[:batch], hidden_states=taps.hidden_states[:batch],
                          keys=taps.keys[:batch], dominant=cfg.dominant, contextual=cfg.contextual)
            np.testing.assert_array_equal(got[3], z.assignment.numpy())


@pytest.mark.parametrize("method", ["scope"])
def test_fp16_graph(tmp_path, tiny, method):
    import onnx
    import onnxruntime as ort

    path = tmp_path / "v16.onnx"
    export_vision_onnx(tiny.vision, make_config(method, 64), path, precision="fp16", debug_scores=True)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.load(str(path)).graph.output}
    assert types["visual_features"] == onnx.TensorProto.FLOAT16 and types["cls_scores"] == onnx.TensorProto.FLOAT
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    visual, kept = session.run(["visual_features", "kept_indices"], {"pixel_values": pixels.half().numpy()})
    assert visual.dtype == np.float16 and np.isfinite(visual).all() and kept.shape == (2, 64)
    assert len({tuple(sorted(set(row))) for row in kept.tolist()}) == 2


# ---- LLaVA-NeXT: one graph, one branch per K_view ----------------------------------------
VIEWS = 6
NEXT_CASES = [("scope", 640), ("visionzip", 160), ("visionzip", 15)]


@pytest.fixture(scope="module")
def tiny_next():
    from models import load_model

    return load_model("tiny-llava-next")


@pytest.fixture(scope="module")
def next_taps(tiny_next):
    pixels = torch.randn(VIEWS, 3, 336, 336, generator=torch.Generator().manual_seed(5))
    return pixels, cls_row_inputs(tiny_next.vision.vision_tower, pixels)


@pytest.mark.parametrize("method,keep", NEXT_CASES)
def test_anyres_onnxruntime_matches_references_per_view(tmp_path, tiny_next, next_taps, method, keep):
    import onnxruntime as ort

    pixels, taps = next_taps
    plan = plan_anyres(method, keep, tiny_next.config)
    path = tmp_path / "anyres.onnx"
    io = export_anyres_vision_onnx(tiny_next.vision, plan, path, debug_scores=True)
    assert io.input_names == ["pixel_values", "view_budget"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    branches = [plan.branches[v % len(plan.branches)] for v in range(VIEWS)]  # mixed budgets
    budgets = np.asarray([b.keep for b in branches], dtype=np.int64)
    out = session.run(None, {"pixel_values": pixels.numpy(), "view_budget": budgets})
    visual, kept = out[:2]
    assert visual.shape[:2] == kept.shape == (VIEWS, plan.rows)
    for v, branch in enumerate(branches):
        count = branch.output
        ref_kept, ref_visual = _reference(tiny_next.vision.projector, taps, branch.cfg, [v])
        np.testing.assert_array_equal(kept[v, :count], ref_kept[0].numpy(), err_msg=f"view {v} K_view {branch.keep}")
        assert (kept[v, count:] == -1).all()
        np.testing.assert_allclose(visual[v, :count], ref_visual[0].numpy(), atol=1e-4, rtol=0)
    if method == "scope":  # one greedy loop serves every branch
        import onnx

        assert sum(n.op_type == "Loop" for n in onnx.load(str(path)).graph.node) == 1
    # a budget no branch was built for keeps nothing
    out = session.run(None, {"pixel_values": pixels[:1].numpy(), "view_budget": np.asarray([1], np.int64)})
    assert (out[1] == -1).all()


# ---- TensorRT-RTX ahead of time -----------------------------------------------------------
RTX = ["--backend", "tensorrt-rtx", "--no-decoder", "--max-batch", "2", "--precision", "fp16"]


@pytest.mark.parametrize("model,method,keep,selector,rows", [
    ("tiny-llava", "scope", "64", "plugin", 64),
    ("tiny-llava", "visionzip", "64", "plugin", 64),
    ("tiny-llava-next", "scope", "160", "onnx", 53),
    ("tiny-llava-next", "visionzip", "160", "onnx", 53),
])
def test_rtx_engine(tmp_path, model, method, keep, selector, rows):
    """With --selector plugin both methods keep their standard-op selection (they have no plugin
    form, so the same graph as --selector onnx is built) and config.json says why."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")
    out = tmp_path / "engine"
    assert main(["build", "--model", model, "--method", method, "--keep", keep, "--selector", selector,
                 *RTX, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    vision = config["vision"]
    assert config["engine"]["built"] and (out / "vision.engine").stat().st_size > 10_000
    assert vision["selector"] == "onnx" and "plugin_onnx" not in vision and not (out / "vision_plugin.onnx").exists()
    if selector == "plugin":
        assert vision["selector_reason"].startswith(f"{method} has no plugin form")
    io = {t["name"]: t for t in vision["engine_io"]}
    assert io["visual_features"]["shape"] == [-1, rows, 64] and io["visual_features"]["dtype"] == "float16"
    assert io["kept_indices"] == {"name": "kept_indices", "mode": "output", "shape": [-1, rows], "dtype": "int64"}
    assert ("view_budget" in io) == (model == "tiny-llava-next")
    if model == "tiny-llava-next" and method == "visionzip":
        _check_visionzip_anyres_section(config)


def _check_visionzip_anyres_section(config: dict) -> None:
    anyres = config["vision"]["anyres"]
    assert anyres["merge"] == "visionzip" and anyres["order"].startswith("base view [CLS, dominant")
    assert anyres["view_budgets"] == [
        {"views": [3], "keep": 53, "output": 53, "dominant_patches": 44, "contextual": 8},
        {"views": [4], "keep": 40, "output": 40, "dominant_patches": 33, "contextual": 6},
        {"views": [5], "keep": 32, "output": 32, "dominant_patches": 25, "contextual": 6},
    ]
    assert anyres["max_tokens_per_image"] == 160 and config["vision"]["pruning"]["keep"] == 160
    assert config["vision"]["pruning"]["derived"]["contextual"] == 8  # the largest branch's constants


# ---- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--method", "scope", "--keep", "600"], "keep must be an integer in 1..576, got 600"),
    (["--method", "scope", "--keep", "0"], "keep must be an integer in 1..576, got 0"),
    (["--method", "scope", "--keep", "64", "--param", "alpha=0"], "alpha must be a number > 0"),
    (["--method", "scope", "--keep", "64", "--param", "alpha=-0.5"], "alpha must be a number > 0"),
    (["--method", "scope", "--keep", "64", "--param", "contextual=10"], "unknown parameter(s) contextual"),
    (["--method", "visionzip", "--keep", "1"], "keep must be an integer in 2..576 for visionzip"),
    (["--method", "visionzip", "--keep", "577"], "keep must be an integer in 2..576 for visionzip"),
    (["--method", "visionzip", "--keep", "64", "--param", "contextual=0"], "contextual must be an integer >= 1"),
    (["--method", "visionzip", "--keep", "64", "--param", "contextual=64"], "contextual=64 leaves no room"),
    (["--method", "visionzip", "--keep", "64", "--param", "alpha=1"], "unknown parameter(s) alpha"),
    (["--method", "visionzip"], "--keep is required for --method visionzip"),
    (["--model", "tiny-llava-next", "--method", "visionzip", "--keep", "5"],
     "K_view = floor(5 / 3) = 1 tokens per view, which visionzip cannot use"),
    (["--model", "tiny-llava-next", "--method", "visionzip", "--keep", "640", "--param", "contextual=150"],
     "K_view = floor(640 / 5) = 128 tokens per view, which visionzip cannot use: contextual=150"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "e"
    model = [] if "--model" in argv else ["--model", "tiny-llava"]
    assert main(["build", *model, *argv, "--backend", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
