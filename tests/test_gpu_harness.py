"""The GPU check's kernel harness, built for the host: its case and output files carry exactly
what select_tokens decides (the CUDA build runs the same selectImage steps on the device)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_kernel_cases as cases_mod  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    out = tmp_path_factory.mktemp("harness") / "select_harness"
    subprocess.run(["g++", "-O1", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-x", "c++",
                    "-I", str(ROOT / "plugins" / "src"), str(ROOT / "plugins" / "harness" / "select_harness.cu"),
                    "-o", str(out)], check=True)
    return out


def test_random_and_tie_planted_cases_match_select_tokens(harness, tmp_path):
    cases = cases_mod.make_cases(per_method=8, seed=3)
    assert {c.method for c in cases} == set(cases_mod.kernel_methods())
    assert {c.batch for c in cases} == {1, 8} and {c.ties for c in cases} == {True, False}
    cases_mod.write_cases(cases, tmp_path / "cases.bin")
    subprocess.run([str(harness), "run", str(tmp_path / "cases.bin"), str(tmp_path / "out.bin")], check=True)
    outputs = cases_mod.read_outputs(tmp_path / "out.bin", cases)
    report = cases_mod.compare(cases, outputs)
    assert all(r["identical"] for r in report.values()), report
    # a wrong index is reported, with the case it came from
    outputs[0] = outputs[0].copy()
    outputs[0][0, 0] = (outputs[0][0, 0] + 1) % 576
    bad = cases_mod.compare(cases, outputs)[cases[0].method]
    assert bad["mismatches"] == 1 and bad["first_mismatches"][0]["case"] == cases[0].label()


def test_select_params_follow_the_plugin_fields():
    from exporter.pruning import make_config

    cfg = make_config("hivtp", 128, grid=(24, 24), num_layers=24)
    assert cases_mod.select_params(cfg) == [1, 128, 24, 24, 3, 2, cfg.per_region_budget, cfg.window, 0, 0, 0]
    cfg = make_config("hiprune++", 128, grid=(24, 24), num_layers=24, buffer_edges="discard")
    assert cases_mod.select_params(cfg) == [3, 128, 24, 24, 2, 0, 0, 0, cfg.num_anchors, 1, cfg.num_extra]


def test_harness_refuses_a_truncated_case_file(harness, tmp_path):
    cases = cases_mod.make_cases(per_method=1, seed=0, methods=["hiprune"])
    cases_mod.write_cases(cases, tmp_path / "cases.bin")
    data = (tmp_path / "cases.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-8])
    proc = subprocess.run([str(harness), "run", str(tmp_path / "short.bin"), str(tmp_path / "o.bin")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "truncated" in proc.stderr
