"""Engine directories loaded unattended: every artifact about to be used is checked against the
size and sha256 config.json recorded (cached by name, size and modification time), paths in
config.json stay inside the directory, and `inspect --verify` checks everything."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from runtime import Pipeline
from runtime.contract.verify import CACHE_FILE
from runtime.errors import EngineDirError


@pytest.fixture
def copy(engine, tmp_path) -> Path:
    dest = tmp_path / "engine"
    shutil.copytree(engine, dest, ignore=shutil.ignore_patterns(CACHE_FILE))
    return dest


def _edit_config(path: Path, change) -> None:
    cfg = json.loads((path / "config.json").read_text())
    change(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_a_changed_decoder_is_refused_and_no_verify_lets_it_run(copy, images):
    data = copy / "decoder.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte: same size, different weights
    data.write_bytes(bytes(blob))
    with pytest.raises(EngineDirError, match="decoder.onnx.data does not match the sha256"):
        Pipeline.from_dir(copy, backend="onnxruntime")
    Pipeline.from_dir(copy, backend="onnxruntime", verify=False).generate(images[0], "hi", max_new_tokens=2)
    data.write_bytes(bytes(blob[:-8]))
    with pytest.raises(EngineDirError, match=r"decoder.onnx.data is \d+ bytes but config.json records"):
        Pipeline.from_dir(copy, backend="onnxruntime")


def test_verification_is_cached_by_size_and_mtime(copy, monkeypatch):
    import runtime.contract.verify as verify

    Pipeline.from_dir(copy, backend="onnxruntime")
    assert (copy / CACHE_FILE).is_file()
    hashed = []
    monkeypatch.setattr(verify, "sha256_file", lambda p: hashed.append(p.name) or "x")
    Pipeline.from_dir(copy, backend="onnxruntime")
    assert hashed == []  # nothing changed: nothing hashed again
    vision = copy / "vision.onnx"
    os.utime(vision, ns=(vision.stat().st_atime_ns, vision.stat().st_mtime_ns + 10**9))
    with pytest.raises(EngineDirError, match="vision.onnx does not match"):
        Pipeline.from_dir(copy, backend="onnxruntime")
    assert hashed == ["vision.onnx"]


def test_paths_leaving_the_directory_are_refused(copy, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(copy / "vision.onnx", outside)
    for bad in (str(outside), "../elsewhere.onnx"):
        _edit_config(copy, lambda c, bad=bad: c["vision"].update(onnx=bad, onnx_files=[bad]))
        with pytest.raises(EngineDirError, match="not a path inside the engine directory"):
            Pipeline.from_dir(copy, backend="onnxruntime", verify=False)
    (copy / "link.onnx").symlink_to(outside)
    _edit_config(copy, lambda c: c["vision"].update(onnx="link.onnx", onnx_files=["link.onnx"]))
    with pytest.raises(EngineDirError, match="leads outside the engine directory"):
        Pipeline.from_dir(copy, backend="onnxruntime", verify=False)


def test_inspect_verify_checks_everything(copy, capsys):
    from exporter.cli import main

    assert main(["inspect", str(copy), "--verify"]) == 0
    assert "artifacts match config.json" in capsys.readouterr().out
    (copy / "processor" / "tokenizer.json").write_text("{}")
    assert main(["inspect", str(copy), "--verify"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "processor/tokenizer.json" in line


def test_graphs_from_another_build_are_refused(copy, tmp_path_factory):
    """vision.onnx of a K=32 build in a K=64 directory (hashes re-recorded, so only the I/O
    check can notice): the declared K and the graph's disagree."""
    from fakes.engines import build_engine_dir
    from runtime.contract import artifact_records, to_json

    other = build_engine_dir(tmp_path_factory.getbasetemp() / "engines", "hivtp", keep=32)
    shutil.copy(Path(other) / "vision.onnx", copy / "vision.onnx")
    _edit_config(copy, lambda c: c.update(artifacts=to_json(artifact_records(copy))))
    with pytest.raises(EngineDirError, match=r"visual_features has shape \[-1, 32, 64\], config.json says \[-1, 64, 64\]"):
        Pipeline.from_dir(copy, backend="onnxruntime")


def test_config_whose_k_disagrees_with_its_graph_is_refused(copy):
    _edit_config(copy, lambda c: c["vision"]["pruning"].update(output_tokens=65))
    with pytest.raises(EngineDirError, match="output_tokens is 65 but vision.outputs declares kept_indices"):
        Pipeline.from_dir(copy, backend="onnxruntime")
