"""LLaVA-NeXT (anyres) export on the built-in tiny-llava-next: the branched vision graph under
ONNX Runtime against the eager HF tower + select_tokens per view (K_view = floor(K / n_views)),
the `none` per-view graph against the HF projector, the engine directory's `vision.anyres`
section, TensorRT-RTX ahead-of-time builds with both selectors, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.anyres_plan import plan_anyres
from exporter.cli import main
from exporter.onnx_export import export_anyres_vision_onnx, export_vision_onnx
from exporter.pruning import layer_scores, make_config, select_tokens

ROOT = Path(__file__).resolve().parents[1]
VIEWS = 6
# K = 15 gives K_view 5 for 3 views and 3 for both 4 and 5 views: two view counts, one branch
# (hiprune++ then adds no prompt token anywhere: no text_embeds input). hiprune++ at K = 100
# mixes branches with t = 1 (K_view 33) and t = 0 (25, 20) in one graph.
CASES = [(m, k) for m in ("hivtp", "hiprune", "hiprune++") for k in (640, 160)]
CASES += [("hiprune", 15), ("hiprune++", 15), ("hiprune++", 100)]


@pytest.fixture(scope="module")
def tiny_next():
    from models import load_model

    return load_model("tiny-llava-next")


@pytest.fixture(scope="module")
def projection(tiny_next):
    from models.text_tower import load_visual_projection

    return load_visual_projection(tiny_next)


@pytest.fixture(scope="module")
def reference(tiny_next, projection):
    """Eager HF tower on VIEWS views: layer scores, feature rows, CLIP-space similarity."""
    tower = tiny_next.vision.vision_tower
    tower.config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(5)
    pixels = torch.randn(VIEWS, 3, 336, 336, generator=gen)
    text = torch.randn(VIEWS, projection.out_features, generator=gen)
    with torch.no_grad():
        out = tower(pixels, output_attentions=True, output_hidden_states=True)
        features = out.hidden_states[-2][:, 1:]
        image = projection(tiny_next.vision.clip.post_layernorm(features))
    image = image / image.norm(dim=-1, keepdim=True)
    similarity = torch.einsum("bnd,bd->bn", image, text / text.norm(dim=-1, keepdim=True))
    return {"pixels": pixels, "text": text, "scores": layer_scores(out.attentions),
            "features": features, "similarity": similarity}


@pytest.fixture(scope="module")
def exported(tiny_next, projection, tmp_path_factory):
    """(plan, onnxruntime session), exported once per case."""
    import onnxruntime as ort

    cache = {}

    def get(method, keep):
        if (method, keep) not in cache:
            plan = plan_anyres(method, keep, tiny_next.config)
            path = tmp_path_factory.mktemp("anyres") / f"{method}-{keep}.onnx"
            io = export_anyres_vision_onnx(tiny_next.vision, plan, path,
                                           clip_projection=projection if plan.uses_prompt else None)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            cache[method, keep] = (plan, session, io, path)
        return cache[method, keep]

    return get


def _run(session, plan, reference, budgets):
    feeds = {"pixel_values": reference["pixels"].numpy(), "view_budget": np.asarray(budgets, dtype=np.int64)}
    if plan.uses_prompt:
        feeds["text_embeds"] = reference["text"].numpy()
    return session.run(None, feeds)


def test_plan_budgets_for_the_7b_layouts(tiny_next):
    plan = plan_anyres("hivtp", 640, tiny_next.config)
    assert [(b.views, b.keep, b.output) for b in plan.branches] == [((3,), 213, 213), ((4,), 160, 160),
                                                                     ((5,), 128, 128)]
    assert plan.rows == 213 and plan.max_tokens_per_image == 640
    shared = plan_anyres("hiprune", 15, tiny_next.config)
    assert [(b.views, b.keep) for b in shared.branches] == [((3,), 5), ((4, 5), 3)]
    plus = plan_anyres("hiprune++", 640, tiny_next.config)
    assert [b.output for b in plus.branches] == [217, 163, 131] and plus.rows == 217
    assert plus.max_tokens_per_image == 5 * 131
    assert plan_anyres("none", None, tiny_next.config).max_tokens_per_image == 576 + 48 * 49


@pytest.mark.parametrize("method,keep", CASES)
def test_onnxruntime_matches_reference_per_view(exported, tiny_next, reference, method, keep):
    import onnx

    plan, session, io, path = exported(method, keep)
    names = [i.name for i in onnx.load(str(path)).graph.input]
    assert names == io.input_names
    assert names == ["pixel_values", "view_budget"] + (["text_embeds"] if plan.uses_prompt else [])
    assert not {n.op_type for n in onnx.load(str(path)).graph.node} & {"NonZero", "ScatterElements", "ScatterND"}

    branches = [plan.branches[v % len(plan.branches)] for v in range(VIEWS)]  # mixed budgets
    visual, kept = _run(session, plan, reference, [b.keep for b in branches])
    hidden = tiny_next.config.text_config.hidden_size
    assert visual.shape == (VIEWS, plan.rows, hidden) and kept.shape == (VIEWS, plan.rows)
    assert kept.dtype == np.int64
    for v, branch in enumerate(branches):
        count = branch.output
        sim = reference["similarity"][v : v + 1] if method == "hiprune++" else None
        ref = select_tokens(method, reference["scores"][v : v + 1], branch.keep, text_similarity=sim)[0]
        np.testing.assert_array_equal(kept[v, :count], ref.numpy(), err_msg=f"view {v} K_view {branch.keep}")
        assert (kept[v, count:] == -1).all()
        with torch.no_grad():
            ref_visual = tiny_next.vision.projector(reference["features"][v, ref])
        np.testing.assert_allclose(visual[v, :count], ref_visual.numpy(), atol=1e-4, rtol=0)


def test_budget_without_a_branch_selects_nothing(exported, reference):
    plan, session, _, _ = exported("hiprune", 160)
    budgets = [plan.branches[0].keep] * (VIEWS - 1) + [7]
    _, kept = _run(session, plan, reference, budgets)
    assert (kept[-1] == -1).all() and (kept[0] >= 0).all()


def test_none_is_the_per_view_projector(tiny_next, reference, tmp_path):
    import onnxruntime as ort

    path = tmp_path / "none.onnx"
    io = export_vision_onnx(tiny_next.vision, make_config("none", None), path)
    assert io.input_names == ["pixel_values"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    visual, kept = session.run(None, {"pixel_values": reference["pixels"].numpy()})
    with torch.no_grad():
        ref = tiny_next.vision.projector(reference["features"])
    assert visual.shape == (VIEWS, 576, tiny_next.config.text_config.hidden_size)
    np.testing.assert_allclose(visual, ref.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(kept, np.broadcast_to(np.arange(576), (VIEWS, 576)))


@pytest.mark.parametrize("keep", [100, 15])
def test_plugin_graph_has_one_node_per_branch(tiny_next, projection, tmp_path, keep):
    """Every hiprune++ plugin node takes a similarity input, even at a K_view where t = 0."""
    import onnx

    onnx_node = pytest.importorskip("exporter.plugin_node")
    plan = plan_anyres("hiprune++", keep, tiny_next.config)
    path = tmp_path / "plugin.onnx"
    export_anyres_vision_onnx(tiny_next.vision, plan, path, selector_factory=onnx_node.plugin_selector,
                              clip_projection=projection if plan.uses_prompt else None)
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "EdgePruneSelect"]
    assert len(nodes) == len(plan.branches) and all(len(n.input) == 2 for n in nodes)
    extra = sorted(a.i for n in nodes for a in n.attribute if a.name == "num_extra")
    assert extra == sorted(b.cfg.num_extra for b in plan.branches)


# ---- engine directory ---------------------------------------------------------------------
LAYOUTS = [
    {"pinpoint": [336, 672], "rows": 1, "cols": 2, "views": 3},
    {"pinpoint": [672, 336], "rows": 2, "cols": 1, "views": 3},
    {"pinpoint": [672, 672], "rows": 2, "cols": 2, "views": 5},
    {"pinpoint": [1008, 336], "rows": 3, "cols": 1, "views": 4},
    {"pinpoint": [336, 1008], "rows": 1, "cols": 3, "views": 4},
]


def _build(out: Path, *argv: str) -> dict:
    assert main(["build", "--model", "tiny-llava-next", "--backend", "onnx", "--precision", "fp32",
                 "--out", str(out), *argv]) == 0
    return json.loads((out / "config.json").read_text())


def test_config_anyres_section_pruned(tmp_path):
    config = _build(tmp_path / "e", "--method", "hivtp", "--keep", "640")
    anyres = config["vision"]["anyres"]
    assert anyres["image_grid_pinpoints"] == [layout["pinpoint"] for layout in LAYOUTS]
    assert anyres["layouts"] == LAYOUTS
    assert (anyres["view_size"], anyres["patch_grid"], anyres["max_views"]) == (336, [24, 24], 5)
    assert anyres["keep_per_image"] == 640 and anyres["view_rule"] == "K_view = floor(K / n_views)"
    assert anyres["view_budgets"] == [{"views": [3], "keep": 213, "output": 213},
                                      {"views": [4], "keep": 160, "output": 160},
                                      {"views": [5], "keep": 128, "output": 128}]
    assert anyres["merge"] == "spatial" and anyres["image_newline"] is None
    assert anyres["max_tokens_per_image"] == 640
    assert anyres["order"].startswith("base view first")
    assert config["vision"]["pruning"]["keep"] == 640
    assert [t["name"] for t in config["vision"]["inputs"]] == ["pixel_values", "view_budget"]
    assert config["vision"]["inputs"][1] == {"name": "view_budget", "shape": [-1], "dtype": "int64"}
    assert config["vision"]["outputs"][1] == {"name": "kept_indices", "shape": [-1, 213], "dtype": "int64"}
    decoder = config["decoder"]
    assert decoder["visual_tokens"] == 640 and decoder["max_input_len"] == 1152
    assert not (tmp_path / "e" / "image_newline.npy").exists()


def test_config_anyres_section_none(tmp_path, tiny_next):
    config = _build(tmp_path / "e", "--method", "none")
    anyres = config["vision"]["anyres"]
    assert anyres["keep_per_image"] is None and anyres["view_budgets"] == []
    assert anyres["merge"] == "spatial_unpad" and anyres["max_tokens_per_image"] == 2928
    assert anyres["image_newline"] == "image_newline.npy"
    newline = np.load(tmp_path / "e" / "image_newline.npy")
    assert newline.dtype == np.float32 and newline.shape == (64,)
    np.testing.assert_array_equal(newline, tiny_next.image_newline.float().numpy())
    assert config["artifacts"]["image_newline.npy"]
    assert [t["name"] for t in config["vision"]["inputs"]] == ["pixel_values"]
    assert config["decoder"]["visual_tokens"] == 2928 and config["decoder"]["max_input_len"] == 3440
    assert config["decoder"]["prompt_table"]["max_prompt_embedding_table_size"] == 2928


# ---- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needles", [
    (["--keep", "2"], ["--keep 2 is smaller than the 5 views", "672x672"]),
    (["--method", "hivtp", "--keep", "12"], ["--keep 12", "5-view", "K_view = floor(12 / 5) = 2",
                                             "regions^2 = 4"]),
])
def test_bad_budget_is_one_line_and_exit_2(tmp_path, capsys, argv, needles):
    out = tmp_path / "e"
    assert main(["build", "--model", "tiny-llava-next", "--backend", "onnx", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


# ---- TensorRT-RTX ahead of time -----------------------------------------------------------
def _rtx_or_skip():
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")


def _check_engine_io(config: dict, rows: int) -> None:
    io = {t["name"]: t for t in config["vision"]["engine_io"]}
    assert set(io) == {"pixel_values", "view_budget", "visual_features", "kept_indices"}
    assert io["pixel_values"]["shape"] == [-1, 3, 336, 336] and io["pixel_values"]["dtype"] == "float16"
    assert io["view_budget"]["shape"] == [-1] and io["view_budget"]["dtype"] == "int64"
    assert io["visual_features"]["shape"] == [-1, rows, 64] and io["visual_features"]["dtype"] == "float16"
    assert io["kept_indices"]["shape"] == [-1, rows] and io["kept_indices"]["dtype"] == "int64"
    profile = config["vision"]["engine_profiles"][0]
    assert profile["pixel_values"] == [[1, 3, 336, 336], [5, 3, 336, 336], [10, 3, 336, 336]]
    assert profile["view_budget"] == [[1], [5], [10]]
    assert config["engine"]["built"] is True


RTX_ARGS = ["--model", "tiny-llava-next", "--method", "hiprune", "--keep", "160", "--backend", "tensorrt-rtx",
            "--no-decoder", "--max-batch", "2"]


def test_rtx_engine_standard_selector(tmp_path):
    _rtx_or_skip()
    out = tmp_path / "engine"
    assert main(["build", *RTX_ARGS, "--selector", "onnx", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["vision"]["selector"] == "onnx" and (out / "vision.engine").stat().st_size > 10_000
    _check_engine_io(config, 53)


def test_rtx_engine_plugin_selector_one_node_per_branch(tmp_path):
    _rtx_or_skip()
    import onnx

    import plugins

    if plugins.find_library("tensorrt-rtx") is None:
        pytest.skip("no plugin library built (python -m plugins build)")
    out = tmp_path / "engine"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(plugins.rtx_env()), env.get("LD_LIBRARY_PATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "exporter", "build", *RTX_ARGS, "--selector", "plugin",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["vision"]["selector"] == "plugin"
    _check_engine_io(config, 53)
    nodes = [n for n in onnx.load(str(out / "vision_plugin.onnx")).graph.node if n.op_type == plugins.PLUGIN_NAME]
    keeps = sorted(a.i for n in nodes for a in n.attribute if a.name == "keep")
    assert keeps == [32, 40, 53]
    assert [b["keep"] for b in config["vision"]["plugin"]["branches"]] == [53, 40, 32]
