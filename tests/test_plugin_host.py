"""The plugin kernel's per-patch code, compiled for the host with g++ (plugins/src/select_core.h
via libedgeprune_host.so), against the project's reference `select_tokens`, plus the custom
ONNX node the exporter emits. No GPU and no TensorRT runtime needed."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from exporter.pruning import make_config, select_tokens, vectorized
from plugins import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.host import HostSelectError, HostShim
from exporter.plugin_node import plugin_fields, plugin_selector


@pytest.fixture(scope="session")
def shim(host_shim_path) -> HostShim:
    return HostShim(host_shim_path)


def _rows(cfg, scores: torch.Tensor) -> torch.Tensor:
    return scores[:, list(cfg.layers), 1:]


def _check(shim, method, scores, keep, grid, sim=None, **params):
    cfg = make_config(method, keep, grid=grid, num_layers=scores.shape[1], **params)
    expected = select_tokens(method, scores, keep, grid=grid, text_similarity=sim, **params)
    got = shim.select(plugin_fields(cfg), _rows(cfg, scores), None if sim is None else sim)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected.numpy())
    return got


# ---- random scores, every method, many K -------------------------------------------------
GRIDS = [(24, 24), (8, 8), (6, 10), (4, 4), (12, 6)]


@st.composite
def cases(draw):
    method = draw(st.sampled_from(["hivtp", "hiprune", "hiprune++"]))
    grid = draw(st.sampled_from(GRIDS))
    n = grid[0] * grid[1]
    keep = draw(st.integers(1, n))
    if method == "hivtp":
        params = {
            "regions": draw(st.sampled_from([1, 2, 3])),
            "global_fraction": draw(st.sampled_from([0.0, 0.25, 0.5, 0.6, 1.0])),
            "layers": draw(st.sampled_from([(6, 7, 8), (0,), (3, 1)])),
        }
    else:
        params = {
            "alpha": draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0])),
            "buffer_edges": draw(st.sampled_from(["clamp", "discard"])),
            "object_layer": draw(st.sampled_from([9, 1, 24])),
            "deep_layer": draw(st.sampled_from([-2, 0, 5])),
        }
        if method == "hiprune++":
            params["beta"] = draw(st.sampled_from([0.1, 0.5, 1.0]))
    batch = draw(st.integers(1, 3))
    # Few distinct levels make exact ties common: the tie rule is where implementations split.
    levels = draw(st.sampled_from([0, 4, 64]))
    seed = draw(st.integers(0, 2**31 - 1))
    return method, grid, keep, params, batch, levels, seed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_host_kernel_matches_select_tokens(shim, case):
    method, grid, keep, params, batch, levels, seed = case
    try:
        make_config(method, keep, grid=grid, num_layers=24, **params)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    shape = (batch, 24, n + 1)
    raw = rng.integers(0, levels, shape) / levels if levels else rng.random(shape)
    scores = torch.from_numpy(raw.astype(np.float32))
    sim = None
    if method == "hiprune++":
        s = rng.integers(-3, 4, (batch, n)) / 3 if levels else rng.uniform(-1, 1, (batch, n))
        sim = torch.from_numpy(s.astype(np.float32))
    got = _check(shim, method, scores, keep, grid, sim, **params)
    cfg = make_config(method, keep, grid=grid, num_layers=24, **params)
    assert got.shape == (batch, cfg.output_count)
    assert (np.diff(got, axis=1) > 0).all()


@pytest.mark.parametrize("method", ["hivtp", "hiprune", "hiprune++"])
@pytest.mark.parametrize("keep", [4, 25, 26, 64, 128, 192, 288, 400, 560])
def test_host_kernel_llava_budgets(shim, method, keep):
    """The LLaVA grid at the budgets the benchmarks use and at the anchor-count edges."""
    gen = torch.Generator().manual_seed(keep)
    scores = torch.rand(4, 24, 577, generator=gen)
    scores[1] = (scores[1] * 8).floor() / 8  # an image full of ties
    sim = torch.rand(4, 576, generator=gen) * 2 - 1 if method == "hiprune++" else None
    _check(shim, method, scores, keep, (24, 24), sim)


# ---- PRUNING.md worked examples ----------------------------------------------------------
H1 = [0.10, 0.50, 0.20, 0.20, 0.30, 0.05, 0.90, 0.10, 0.40, 0.38, 0.15, 0.60, 0.35, 0.20, 0.70, 0.65]


def _h2_scores() -> list[float]:
    pattern = [[90, 80, 10, 11], [85, 95, 12, 13], [20, 21, 30, 31], [22, 23, 32, 33]]
    out = [0.0] * 64
    for qr, qc, offset in ((0, 0, 0), (0, 1, 100), (1, 0, 200), (1, 1, 300)):
        for r in range(4):
            for c in range(4):
                out[(qr * 4 + r) * 8 + qc * 4 + c] = float(pattern[r][c] + offset)
    return out


def _single_layer(values: list[float]) -> torch.Tensor:
    return torch.tensor([[0.0] + values], dtype=torch.float32).unsqueeze(0)  # (1, 1, 1+N), CLS first


def test_example_h1(shim):
    # keep=8, g=0.5 on 4x4: one global pick per quadrant and 2x2 windows = the released rule
    got = _check(shim, "hivtp", _single_layer(H1), 8, (4, 4), layers=(0,))
    assert got.tolist() == [[1, 2, 4, 6, 8, 9, 14, 15]]


def test_example_h2(shim):
    # keep=28, g=0.6: 4 global picks per quadrant, K_l = 12 = the 12 unskipped windows
    scores = _single_layer(_h2_scores())
    got = _check(shim, "hivtp", scores, 28, (8, 8), layers=(0,), global_fraction=0.6)
    expected = [0, 1, 4, 5, 8, 9, 11, 12, 13, 15, 25, 27, 29, 31, 32, 33, 36, 37, 40, 41, 43, 44, 45, 47, 57, 59, 61, 63]
    assert got.tolist() == [expected]
    assert select_tokens("hivtp", scores, None, grid=(8, 8), layers=(0,))[0].tolist() == expected


P1_OBJ = [0.10, 0.12, 0.15, 0.11, 0.13, 0.90, 0.14, 0.16, 0.17, 0.18, 0.19, 0.20, 0.21, 0.22, 0.23, 0.24]
P1_DEEP = [0.02, 0.50, 0.03, 0.40, 0.01, 0.90, 0.05, 0.06, 0.30, 0.80, 0.07, 0.08, 0.09, 0.04, 0.35, 0.10]
P2_OBJ = [0.10, 0.20, 0.90, 0.10, 0.80, 0.30, 0.15, 0.12, 0.11, 0.13, 0.14, 0.16, 0.17, 0.18, 0.19, 0.21]
P2_DEEP = [0.90, 0.80, 0.10, 0.10, 0.10, 0.10, 0.10, 0.20, 0.10, 0.05, 0.30, 0.25, 0.02, 0.15, 0.01, 0.40]
P1_COS = [0.10, 0.85, 0.20, 0.30, 0.40, 0.95, 0.50, 0.60, 0.45, 0.70, 0.55, -0.30, 0.00, 0.05, 0.20, 0.58]


def _two_layers(obj, deep) -> torch.Tensor:
    return torch.tensor([[[0.0] + obj, [0.0] + deep]], dtype=torch.float32)


@pytest.mark.parametrize(
    "obj, deep, keep, alpha, expected",
    [
        (P1_OBJ, P1_DEEP, 8, 0.5, [1, 3, 4, 5, 6, 8, 9, 14]),
        (P2_OBJ, P2_DEEP, 12, 0.8, [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 15]),
    ],
    ids=["P1", "P2"],
)
def test_examples_hiprune(shim, obj, deep, keep, alpha, expected):
    got = _check(shim, "hiprune", _two_layers(obj, deep), keep, (4, 4), alpha=alpha, object_layer=1, deep_layer=1)
    assert got.tolist() == [expected]


def test_example_hiprune_plus(shim):
    sim = torch.tensor([P1_COS], dtype=torch.float32)
    got = _check(
        shim, "hiprune++", _two_layers(P1_OBJ, P1_DEEP), 8, (4, 4), sim, alpha=0.5, beta=0.5, object_layer=1, deep_layer=1
    )
    assert got.tolist() == [[1, 3, 4, 5, 6, 7, 8, 9, 14]]


# ---- bad fields: the plugin's own messages name the field --------------------------------
def _fields(method="hiprune", keep=64, **params):
    return plugin_fields(make_config(method, keep, **params))


@pytest.mark.parametrize(
    "change, rows, n, inputs, needle",
    [
        ({"keep": 577}, 2, 576, 1, "field 'keep' = 577 is out of range 1..576"),
        ({"method": 7}, 2, 576, 1, "field 'method' = 7 is not a known method id"),
        ({"grid": [24, 23]}, 2, 576, 1, "field 'grid' = 24x23 (552 patches) does not match the input length 576"),
        ({}, 2, 577, 1, "field 'grid' = 24x24 (576 patches) does not match the input length 577"),
        ({"num_anchors": 13}, 2, 576, 1, "field 'num_anchors' = 13 is out of range 0..12"),
        ({"num_anchors": 3}, 2, 576, 1, "field 'num_anchors' = 3 does not follow round(keep * alpha / 5)"),
        ({"buffer_edges": 2}, 2, 576, 1, "field 'buffer_edges' = 2 is out of range 0..1"),
        ({}, 3, 576, 1, "needs 2 layer rows, the input has 3"),
        ({"method": 3, "num_extra": 1, "beta": 0.1}, 2, 576, 1, "field 'method' = 3 takes 2 input(s), got 1"),
    ],
)
def test_bad_fields_are_named(shim, change, rows, n, inputs, needle):
    fields = {**_fields(), **change}
    with pytest.raises(HostSelectError) as err:
        shim.select(fields, np.zeros((1, rows, n), np.float32), nb_inputs=inputs)
    assert needle in str(err.value)


def test_bad_hivtp_fields_are_named(shim):
    fields = _fields("hivtp", 64)
    with pytest.raises(HostSelectError, match="field 'layers' needs 3 layer rows, the input has 2"):
        shim.select(fields, np.zeros((1, 2, 576), np.float32))
    with pytest.raises(HostSelectError, match="field 'window' must divide the region sides"):
        shim.select({**fields, "window": 5}, np.zeros((1, 3, 576), np.float32))
    with pytest.raises(HostSelectError, match="field 'regions' must divide both grid sides"):
        shim.select({**fields, "regions": 5}, np.zeros((1, 3, 576), np.float32))


# ---- the selector the exporter plugs into the vision graph -------------------------------
def test_plugin_fields_values():
    cfg = make_config("hivtp", 128)
    assert plugin_fields(cfg) == {
        "method": 1, "keep": 128, "grid": [24, 24], "regions": 2, "layers": [6, 7, 8],
        "per_region_budget": 16, "window": 3, "global_fraction": 0.5,
    }
    cfg = make_config("hiprune++", 25, buffer_edges="discard")
    assert plugin_fields(cfg) == {
        "method": 3, "keep": 25, "grid": [24, 24], "object_layer": 9, "deep_layer": -2, "buffer_edges": 1,
        "num_anchors": 0, "alpha": 0.1, "num_extra": 0, "beta": 0.1,
    }
    with pytest.raises(ValueError, match="no plugin form"):
        plugin_fields(make_config("none", None))
    with pytest.raises(ValueError, match="keep must be an integer"):
        plugin_fields(make_config("hivtp", None))


@pytest.mark.parametrize("method", ["hivtp", "hiprune", "hiprune++"])
def test_selector_eager_equals_vectorized(method):
    cfg = make_config(method, 64)
    gen = torch.Generator().manual_seed(3)
    rows = torch.rand(3, len(cfg.layers), 576, generator=gen)
    sim = torch.rand(3, 576, generator=gen) if method == "hiprune++" else None
    got = plugin_selector(cfg)(rows, sim)
    assert got.dtype == torch.int64
    assert torch.equal(got, vectorized.select(cfg, rows, sim))


@pytest.mark.parametrize("method", ["hiprune", "hiprune++"])
def test_selector_exports_custom_node(tmp_path, method):
    cfg = make_config(method, 64)
    selector = plugin_selector(cfg)

    class Graph(torch.nn.Module):
        def forward(self, rows, sim):
            return selector(rows, sim if method == "hiprune++" else None)

    rows, sim = torch.rand(2, 2, 576), torch.rand(2, 576)
    path = tmp_path / "sel.onnx"
    torch.onnx.export(
        Graph(), (rows, sim), str(path), dynamo=False, opset_version=17, input_names=["rows", "sim"],
        output_names=["kept"], dynamic_axes={"rows": {0: "b"}, "sim": {0: "b"}, "kept": {0: "b"}},
    )
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    assert [n.op_type for n in nodes] == [PLUGIN_NAME, "Cast"]
    plugin, cast = nodes
    assert plugin.domain == PLUGIN_NAMESPACE
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in plugin.attribute}
    assert attrs.pop("plugin_version") == PLUGIN_VERSION.encode()
    assert attrs.pop("plugin_namespace") == PLUGIN_NAMESPACE.encode()
    fields = plugin_fields(cfg)
    assert set(attrs) == set(fields)
    assert attrs["keep"] == 64 and attrs["num_anchors"] == 1 and attrs["grid"] == [24, 24]
    assert attrs["alpha"] == pytest.approx(0.1)
    assert list(plugin.input) == (["rows", "sim"] if method == "hiprune++" else ["rows"])
    assert onnx.helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.INT64
    out = model.graph.output[0].type.tensor_type
    assert out.elem_type == onnx.TensorProto.INT64
    assert [d.dim_value or d.dim_param for d in out.shape.dim] == ["b", cfg.output_count]
