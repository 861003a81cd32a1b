"""TensorRT-RTX builds the tiny model's vision graph ahead of time (no GPU needed) for every
method; the engine's I/O names, shapes and dtypes are those the exporter promises."""
import json

import pytest

from exporter.cli import main

trt_rtx = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")

CASES = [("none", None, 576), ("hivtp", 64, 64), ("hiprune", 128, 128), ("hiprune++", 128, 131)]


@pytest.mark.parametrize("method,keep,tokens", CASES)
@pytest.mark.parametrize("precision", ["fp16"])
def test_rtx_engine_for_every_method(tmp_path, method, keep, tokens, precision):
    out = tmp_path / "engine"
    argv = ["build", "--model", "tiny-llava", "--method", method, "--backend", "tensorrt-rtx",
            "--selector", "onnx", "--no-decoder", "--max-batch", "4", "--precision", precision,
            "--out", str(out)]
    if keep:
        argv += ["--keep", str(keep)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["engine"] == {"backend": "tensorrt-rtx", "version": config["engine"]["version"],
                                "built": True, "reason": None}
    engine = out / "vision.engine"
    assert engine.stat().st_size > 10_000
    assert config["artifacts"]["vision.engine"]
    io = {t["name"]: t for t in config["vision"]["engine_io"]}
    dtype = "float16" if precision == "fp16" else "float32"
    assert io["pixel_values"]["shape"] == [-1, 3, 336, 336]
    assert io["pixel_values"]["dtype"] == dtype
    assert io["visual_features"]["shape"] == [-1, tokens, 64]
    assert io["visual_features"]["dtype"] == dtype
    assert io["kept_indices"]["shape"] == [-1, tokens]
    assert io["kept_indices"]["dtype"] == "int64"
    if method == "hiprune++":
        assert io["text_embeds"]["shape"] == [-1, 32]
        text = config["text"]  # the CLIP text tower gets its own float32 engine
        assert text["engine"] == "text.engine" and (out / "text.engine").stat().st_size > 10_000
        assert text["engine_io"] == [
            {"name": "input_ids", "mode": "input", "shape": [-1, 77], "dtype": "int64"},
            {"name": "text_embeds", "mode": "output", "shape": [-1, 32], "dtype": "float32"},
        ]
        assert text["engine_profiles"] == [{"input_ids": [[1, 77], [1, 77], [32, 77]]}]  # 8 chunks x batch 4
    else:
        assert config["text"] is None and not (out / "text.engine").exists()
    assert config["vision"]["engine_profiles"][0]["pixel_values"] == [[1, 3, 336, 336], [1, 3, 336, 336], [4, 3, 336, 336]]


def test_rtx_fp32_engine(tmp_path):
    out = tmp_path / "engine32"
    assert main(["build", "--model", "tiny-llava", "--keep", "64", "--backend", "tensorrt-rtx",
                 "--selector", "onnx", "--no-decoder", "--precision", "fp32", "--out", str(out)]) == 0
    io = {t["name"]: t for t in json.loads((out / "config.json").read_text())["vision"]["engine_io"]}
    assert io["visual_features"]["dtype"] == "float32"
