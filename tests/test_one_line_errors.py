"""Everywhere a user's input or environment can be wrong, the answer is one `error:` line and exit
code 2 (never a traceback, never a half-written directory): file-system errors at --out,
damaged engine directories, broken chat templates, bad prompt bytes, a closed stdout, bad
sampling options and --param values, bad result paths."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    return err[-1]


def _build(out, *extra):
    from exporter.cli import main

    return main(["build", "--model", "tiny-llava", "--method", "none", "--backend", "onnx", "--no-decoder",
                 "--precision", "fp32", "--out", str(out), *extra])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_file_system_errors_while_writing(tmp_path, capsys, monkeypatch, code):
    import onnx

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), "vision.onnx")

    monkeypatch.setattr(onnx, "save_model", fail)
    assert _build(tmp_path / "e") == 2
    assert os.strerror(code) in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_parent(tmp_path, capsys, monkeypatch):
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith(".edgeprune-lock-e"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    assert _build(tmp_path / "e") == 2
    assert "Read-only file system" in _one_line(capsys)


@pytest.mark.parametrize("param,message", [
    ("layers=[6.5,7,8]", "layers"), ("layers=abc", "layers"), ("regions=two", "regions"), ("alpha=nan", "alpha"),
])
def test_malformed_params(tmp_path, capsys, param, message):
    from exporter.cli import main

    code = main(["build", "--model", "tiny-llava", "--keep", "64", "--method",
                 "hiprune" if "alpha" in param else "hivtp", "--param", param, "--backend", "onnx",
                 "--out", str(tmp_path / "e")])
    assert code == 2 and message in _one_line(capsys)
    assert not (tmp_path / "e").exists()


def _gen(engine, *extra, image=None, prompt="hi"):
    from runtime.cli import main

    return main(["generate", "--engine-dir", str(engine), "--image", str(image), "--prompt", prompt,
                 "--backend", "onnxruntime", "--max-new-tokens", "2", *extra])


@pytest.mark.parametrize("option,value,message", [
    ("--temperature", "-1", "temperature must be >= 0"), ("--temperature", "nan", "temperature must be a finite"),
    ("--top-p", "0", "top_p must be in (0, 1]"), ("--top-p", "1.5", "top_p must be in (0, 1]"),
    ("--seed", "-3", "seed must be an integer >= 0"), ("--max-new-tokens", "0", "max_new_tokens must be"),
])
def test_out_of_range_sampling(engine, images, capsys, option, value, message):
    assert _gen(engine, option, value, image=images[0]) == 2
    assert message in _one_line(capsys)


def test_broken_chat_template_and_config_types(engine, images, capsys, tmp_path):
    copy = tmp_path / "e"
    shutil.copytree(engine, copy)
    (copy / "processor" / "chat_template.jinja").write_text("{% for x in %}")
    assert _gen(copy, "--no-verify", image=images[0]) == 2
    assert "chat template" in _one_line(capsys)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["decoder"]["max_input_len"] = "lots"
    (copy / "config.json").write_text(json.dumps(cfg))
    assert _gen(copy, image=images[0]) == 2
    assert "decoder.max_input_len must be an integer" in _one_line(capsys)


def test_non_utf8_prompt_bytes_and_a_closed_stdout(engine, images):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "runtime", "generate", "--engine-dir", engine, "--image", str(images[0]),
            "--backend", "onnxruntime", "--max-new-tokens", "2", "--prompt"]
    res = subprocess.run([*argv, b"caf\xe9 au lait"], cwd=ROOT, capture_output=True, env=env, timeout=300)
    err = res.stderr.decode().strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and "UTF-8" in err[0] or \
        "Unicode" in err[0], err
    proc = subprocess.Popen([*argv, "what is in the picture?"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader went away (`| head -c0`)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1) and b"Traceback" not in err and b"Exception ignored" not in err, err


def test_bench_result_paths_are_checked_first(engine, tmp_path, capsys):
    from runtime.cli import main

    code = main(["bench", "--engine-dir", engine, "--runs", "1", "--json", str(tmp_path / "missing" / "out.json")])
    assert code == 2 and "does not exist" in _one_line(capsys)
    code = main(["bench", "--engine-dir", engine, "--runs", "1", "--plot", str(tmp_path)])
    assert code == 2 and "is a directory" in _one_line(capsys)


def test_runtime_usage_errors_are_one_line(capsys):
    from runtime.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "hi"])
    assert exit_info.value.code == 2
    assert "--engine-dir" in _one_line(capsys)


_INTERRUPT = """
import os, signal, sys
import exporter.trt_compat as trt_compat
trt_compat._Progress.on_phase = lambda self, name: os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C at the first phase
from exporter.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_during_the_engine_build_says_interrupted(tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    out = tmp_path / "e"
    res = subprocess.run([sys.executable, "-c", _INTERRUPT, "build", "--model", "tiny-llava", "--method", "none",
                          "--backend", "tensorrt-rtx", "--no-decoder", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 130, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "error: interrupted; no engine directory was written"
    assert "failed" not in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_tensorrt_chatter_is_hidden_unless_verbose(tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    argv = [sys.executable, "-m", "exporter", "build", "--model", "tiny-llava", "--keep", "64", "--backend",
            "tensorrt-rtx", "--selector", "onnx", "--no-decoder"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = subprocess.run([*argv, "--out", str(tmp_path / "q")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "Int64 binding" not in quiet.stderr
    assert "standard ONNX ops, not the EdgePruneSelect plugin: --selector onnx" in quiet.stderr
    loud = subprocess.run([*argv, "-v", "--out", str(tmp_path / "v")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert loud.returncode == 0 and "Int64 binding" in loud.stderr


@pytest.mark.parametrize("damage", ["missing", "broken template"])
def test_a_checkpoint_without_a_usable_processor_fails_at_build_time(tmp_path, capsys, tiny, damage):
    from exporter.cli import main

    ckpt = tmp_path / "ckpt"
    tiny.model.save_pretrained(ckpt)
    if damage == "broken template":
        tiny.processor.save_pretrained(ckpt)
        (ckpt / "chat_template.jinja").write_text("{% if %}")
    out = tmp_path / "e"
    assert main(["build", "--model", str(ckpt), "--keep", "64", "--backend", "onnx", "--no-decoder",
                 "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "processor" in line or "chat template" in line, line
    assert not out.exists()
