"""The exporter's command line: real builds, the engine-directory contract, and bad input
(one line on stderr, exit code 2, no traceback, no directory left behind)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import main
from runtime.contract import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv):
    return subprocess.run([sys.executable, "-m", "exporter", *argv], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_onnx_only_build_writes_a_complete_directory(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["build", "--model", "tiny-llava", "--keep", "64", "--method", "hiprune",
                 "--backend", "onnx", "--no-decoder", "--param", "alpha=0.2", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "edgeprune-engine-dir"
    assert config["vision"]["pruning"]["params"]["alpha"] == 0.2
    assert config["vision"]["pruning"]["derived"] == {"anchors": 3, "extra_tokens": 0}
    assert config["engine"]["built"] is False and "ONNX graphs only" in config["engine"]["reason"]
    assert config["vision"]["outputs"][0] == {"name": "visual_features", "shape": [-1, 64, 64], "dtype": "float16"}
    for name, record in config["artifacts"].items():
        assert sha256_file(out / name) == record["sha256"] and (out / name).stat().st_size == record["bytes"]
    assert {"torch", "transformers", "onnx", "tensorrt"} <= set(config["versions"])
    assert (out / "processor" / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeprune-staging")]
    # inspect reads it back
    assert main(["inspect", str(out)]) == 0
    assert "hiprune  K=64" in capsys.readouterr().out
    # rebuilding into an edgeprune directory replaces it
    assert main(["build", "--model", "tiny-llava", "--method", "none", "--backend", "onnx",
                 "--no-decoder", "--precision", "fp32", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["vision"]["pruning"]["output_tokens"] == 576


def test_local_checkpoint_directory_loads(tmp_path, tiny):
    ckpt = tmp_path / "ckpt"
    tiny.model.save_pretrained(ckpt)
    tiny.processor.save_pretrained(ckpt)
    out = tmp_path / "e"
    assert main(["build", "--model", str(ckpt), "--keep", "32", "--backend", "onnx", "--no-decoder",
                 "--precision", "fp32", "--out", str(out)]) == 0
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["source"] == "local" and model["path"] == str(ckpt)


@pytest.mark.parametrize("argv,message", [
    (["--model", "no-such-model", "--keep", "64"], "unknown model 'no-such-model'"),
    (["--model", "someone/missing-llava", "--keep", "64"], "not in the local Hugging Face cache"),
    (["--model", "llava-1.5-7b", "--keep", "64"], "llava-hf/llava-1.5-7b-hf is not in the local Hugging Face cache"),
    (["--model", "tiny-llava", "--keep", "0"], "keep must be an integer in 1..576"),
    (["--model", "tiny-llava", "--keep", "600"], "keep must be an integer in 1..576"),
    (["--model", "tiny-llava", "--keep", "3"], "keep must be at least regions^2 = 4"),
    (["--model", "tiny-llava"], "--keep is required for --method hivtp"),
    (["--model", "tiny-llava", "--keep", "64", "--method", "magic"], "argument --method: invalid choice"),
    (["--model", "tiny-llava", "--keep", "64", "--backend", "tensorrt"], "--backend tensorrt needs tensorrt"),
    (["--model", "tiny-llava", "--keep", "64", "--max-batch", "0"], "--max-batch must be at least 1"),
    (["--model", "tiny-llava", "--keep", "64", "--param", "gamma=1"], "unknown parameter(s) gamma"),
    (["--model", "tiny-llava", "--keep", "64", "--method", "hiprune++", "--text-tower", "/nonexistent/clip"],
     "hiprune++ needs the CLIP text tower"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "e"
    with pytest.raises(SystemExit) if "invalid choice" in message else _nothing():
        code = main(["build", *argv, "--backend" if "--backend" not in argv else "--no-decoder",
                     *(["onnx"] if "--backend" not in argv else []), "--out", str(out)])
        assert code == 2
    line = _error_line(capsys)
    assert line.startswith("error: ") and message in line, line
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_foreign_out_directory_is_refused(tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    assert main(["build", "--model", "tiny-llava", "--keep", "64", "--backend", "onnx", "--out", str(foreign)]) == 2
    assert "exists and is not an edgeprune engine directory" in _error_line(capsys)
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]


@pytest.mark.parametrize("damage", ["config", "weights"])
def test_unreadable_checkpoint(tmp_path, capsys, tiny, damage):
    ckpt = tmp_path / "ckpt"
    tiny.model.save_pretrained(ckpt)
    if damage == "config":
        (ckpt / "config.json").write_text("{not json")
    else:
        (ckpt / "model.safetensors").write_bytes(b"\0" * 64)
    assert main(["build", "--model", str(ckpt), "--keep", "64", "--backend", "onnx",
                 "--out", str(tmp_path / "e")]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: cannot ") and str(ckpt) in line
    assert not (tmp_path / "e").exists()


def test_failed_build_leaves_no_directory(tmp_path, monkeypatch, capsys):
    import exporter.onnx_export as onnx_export
    from runtime.errors import UserError

    def explode(*args, **kwargs):
        (Path(args[2]).parent / "partial.onnx").write_bytes(b"half")
        raise UserError("simulated failure during export")

    monkeypatch.setattr(onnx_export, "export_vision_onnx", explode)
    out = tmp_path / "e"
    assert main(["build", "--model", "tiny-llava", "--keep", "64", "--backend", "onnx", "--out", str(out)]) == 2
    assert "simulated failure" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_subprocess_errors_have_no_traceback(tmp_path):
    result = _run("build", "--model", "tiny-llava", "--keep", "9999", "--backend", "onnx", "--out", str(tmp_path / "e"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: keep must be an integer in 1..576, got 9999"
    result = _run("inspect", str(tmp_path))
    assert result.returncode == 2 and "not an edgeprune engine directory" in result.stderr


def test_random_weight_spec_shapes():
    from models.specs import SPECS, llava_config

    cfg = llava_config(SPECS["llava-1.5-7b"])
    assert cfg.vision_config.image_size // cfg.vision_config.patch_size == 24
    assert (cfg.vision_config.hidden_size, cfg.text_config.hidden_size) == (1024, 4096)
    assert llava_config(SPECS["llava-1.5-13b"]).text_config.hidden_size == 5120


def test_without_any_tensorrt_only_onnx_is_written(tmp_path, monkeypatch, capsys):
    import exporter.trt_compat as trt_compat

    monkeypatch.setattr(trt_compat, "available_backend", lambda: None)
    out = tmp_path / "e"
    assert main(["build", "--model", "tiny-llava", "--keep", "64", "--no-decoder", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no engine was built: no TensorRT library is installed" in err
    config = json.loads((out / "config.json").read_text())
    assert config["engine"]["built"] is False and config["vision"]["engine"] is None
    assert not (out / "vision.engine").exists() and (out / "vision.onnx").is_file()


@pytest.mark.parametrize("extra,message", [
    (["--quantize", "int3"], "argument --quantize: invalid choice: 'int3'"),
    (["--quantize", "int4", "--group-size", "100"], "argument --group-size: invalid choice: 100"),
    (["--quantize", "int4", "--calibration", "awq"], "--calibration awq needs calibration images: pass --calib-images DIR"),
    (["--quantize", "int4", "--calibration", "awq", "--calib-images", "{bad}"], "not a readable image"),
])
def test_bad_quantization_input_is_one_error_line(tmp_path, capsys, extra, message):
    bad = tmp_path / "calib"
    bad.mkdir()
    (bad / "ok.png").write_bytes(b"")  # replaced below by a real image
    from PIL import Image

    Image.new("RGB", (8, 8)).save(bad / "ok.png")
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "e"
    argv = ["build", "--model", "tiny-llava", "--keep", "64", "--backend", "onnx", "--out", str(out)]
    argv += [a.replace("{bad}", str(bad)) for a in extra]
    with pytest.raises(SystemExit) if "invalid choice" in message else _nothing():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeprune-staging")]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_inspect_prints_the_memory_budget_and_target_warns(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["build", "--model", "tiny-llava", "--keep", "64", "--backend", "onnx", "--quantize", "int8",
                 "--max-output-len", "16", "--target", "orin-nano", "--out", str(out)]) == 0
    assert "fits Orin Nano 8GB" in capsys.readouterr().err
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "weights int8 rtn  KV cache inplace" in text
    assert "KV cache 0.00 GiB (batch 1 x 1040 positions, in place)" in text
    assert "Orin Nano 8GB (5.5 GiB) yes" in text and "AGX Orin 64GB" in text
    config = json.loads((out / "config.json").read_text())
    assert config["decoder"]["quantization"]["scheme"] == "int8"
    assert config["decoder"]["kv_cache"] == "inplace" and config["decoder"]["onnx_opset"] == 24
