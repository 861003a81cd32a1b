"""The EdgePruneSelect fields of a deserialised plan, read back and compared with config.json
(runtime/backends/plugin_readback.py). The plugin's creator records the fields TensorRT hands
it at run time; the host shim compiles the very same recorder (plugins/src/fields.cpp) and its
runtime-phase creator path, so the read-back is exercised without a GPU: directly, and through
the TensorRT backend with the fake `tensorrt` deserialising a plan that holds plugin layers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from exporter.plugin_node import plugin_fields
from exporter.pruning import make_config
from plugins.host import HostSelectError, HostShim
from runtime import Pipeline
from runtime.backends import plugin_readback
from runtime.contract import artifact_records, read_config, to_json
from runtime.errors import EngineDirError

HIVTP = plugin_fields(make_config("hivtp", 64, regions=2))
HIPRUNE = plugin_fields(make_config("hiprune", 64, alpha=0.1))


@pytest.fixture
def shim(host_shim_path) -> HostShim:
    loaded = HostShim(host_shim_path)
    plugin_readback.clear()
    yield loaded
    plugin_readback.clear()


def test_the_recorder_returns_what_the_creator_was_given(shim):
    shim.create_runtime("select_view_0", HIVTP)
    shim.create_runtime("select_view_1", HIPRUNE)
    got = plugin_readback.records()
    assert [r["layer"] for r in got] == ["select_view_0", "select_view_1"]
    assert got[0]["fields"] == {k: v if isinstance(v, list) else [v] for k, v in HIVTP.items()}
    assert got[1]["fields"]["alpha"] == [pytest.approx(0.1, abs=1e-8)]  # float32, printed with 9 digits
    plugin_readback.check([HIVTP, HIPRUNE], got, "vision.engine")  # same fields: loads
    plugin_readback.clear()
    assert plugin_readback.records() == []


def test_float_fields_compare_as_the_float32_the_plan_carries(shim):
    shim.create_runtime("sel", HIPRUNE)
    assert HIPRUNE["alpha"] == 0.1  # float64 in config.json, float32 in the plan
    plugin_readback.check([HIPRUNE], plugin_readback.records(), "vision.engine")


@pytest.mark.parametrize("other, named", [
    (plugin_fields(make_config("hivtp", 32, regions=2)), "keep=64"),
    (plugin_fields(make_config("hivtp", 64, regions=4)), "regions=2"),
    (HIPRUNE, "method=1"),
])
def test_a_plan_built_for_another_selection_is_refused_naming_the_field(shim, other, named):
    shim.create_runtime("sel", HIVTP)
    with pytest.raises(EngineDirError) as err:
        plugin_readback.check([other], plugin_readback.records(), "vision.engine")
    message = str(err.value)
    assert "\n" not in message and named in message and "rebuild" in message
    assert message.startswith("vision.engine's EdgePruneSelect plugin has ")


def test_every_branch_must_be_in_the_plan(shim):
    shim.create_runtime("sel_a", HIVTP)
    with pytest.raises(EngineDirError, match="keep=32"):
        plugin_readback.check([HIVTP, plugin_fields(make_config("hivtp", 32, regions=2))],
                              plugin_readback.records(), "vision.engine")


def test_nothing_recorded_means_nothing_to_compare():
    plugin_readback.check([HIVTP], None, "vision.engine")
    plugin_readback.check([HIVTP], [], "vision.engine")


def test_fields_the_creator_refuses_are_not_recorded(shim):
    with pytest.raises(HostSelectError, match="keep"):
        shim.create_runtime("sel", {**HIVTP, "keep": -3})
    assert plugin_readback.records() == []


# ---- through the TensorRT backend, with the fake tensorrt ------------------------------------
def _plugin_engine_dir(engine: str, root: Path, tensorrt, shim_path: Path, plan_fields: dict) -> Path:
    """The tiny hivtp directory with fake TensorRT engines; config.json records the plugin fields
    of its own selection, the fake vision plan holds a plugin layer with `plan_fields`."""
    copy = root / "engine"
    shutil.copytree(engine, copy)
    cfg = json.loads((copy / "config.json").read_text())
    p = read_config(copy).vision.pruning
    recorded = plugin_fields(make_config(p.method, p.keep, grid=tuple(p.grid), num_layers=p.num_layers, **p.params))
    tensorrt.write_fake_engine(copy / "vision.engine", copy / "vision.onnx",
                               plugins=[{"library": str(shim_path), "layer": "EdgePruneSelect_0",
                                         "fields": recorded if plan_fields is None else plan_fields}])
    tensorrt.write_fake_engine(copy / "decoder.engine", copy / "decoder.onnx", profiles=2)
    cfg["engine"] = {"backend": "tensorrt", "version": "10.3.0", "built": True, "reason": None,
                     "compute_capability": "8.6"}
    cfg["vision"]["engine"], cfg["decoder"]["engine"] = "vision.engine", "decoder.engine"
    cfg["vision"]["plugin"] = {"library": "plugins/build/trt10/libedgeprune_plugin.so", "fields": recorded}
    cfg["artifacts"] = to_json(artifact_records(copy))
    (copy / "config.json").write_text(json.dumps(cfg))
    return copy


def test_the_backend_loads_a_plan_whose_plugin_matches(engine, images, fake_gpu, host_shim_path, tmp_path):
    copy = _plugin_engine_dir(engine, tmp_path, fake_gpu[0], host_shim_path, None)
    pipe = Pipeline.from_dir(copy, backend="tensorrt")
    want = Pipeline.from_dir(engine, backend="onnxruntime").generate(images[0], "what is this?", max_new_tokens=4)
    assert pipe.generate(images[0], "what is this?", max_new_tokens=4).token_ids == want.token_ids


def test_the_backend_refuses_a_plan_built_for_another_selection(engine, fake_gpu, host_shim_path, tmp_path):
    p = read_config(engine).vision.pruning
    other = plugin_fields(make_config(p.method, p.keep // 2, grid=tuple(p.grid), num_layers=p.num_layers, **p.params))
    copy = _plugin_engine_dir(engine, tmp_path, fake_gpu[0], host_shim_path, other)
    with pytest.raises(EngineDirError) as err:
        Pipeline.from_dir(copy, backend="tensorrt")
    have, need = str(err.value).split(" but config.json records ")
    assert f"keep={p.keep // 2}" in have and f"keep={p.keep}" in need
