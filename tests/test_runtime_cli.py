"""`python -m runtime generate`: streaming, --json, and one-line errors with exit code 2."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_generate_json_and_stream_agree(engine, images):
    res = _run("generate", "--engine-dir", engine, "--image", images[0], "--prompt", "what is in the picture?",
               "--max-new-tokens", "10", "--backend", "onnxruntime", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out) >= {"text", "token_ids", "kept_indices", "timings"}
    assert len(out["token_ids"]) <= 10 and len(out["kept_indices"]) == 64
    assert out["kept_indices"] == sorted(out["kept_indices"])
    t = out["timings"]
    assert t["vision_s"] > 0 and t["prefill_s"] > 0 and len(t["decode_s"]) == len(out["token_ids"]) - 1
    streamed = _run("generate", "--engine-dir", engine, "--image", images[0], "--prompt", "what is in the picture?",
                    "--max-new-tokens", "10", "--backend", "onnxruntime")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.rstrip("\n") == out["text"]


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def _gen(engine, image, prompt="hello", *extra):
    return ["generate", "--engine-dir", str(engine), "--image", str(image), "--prompt", prompt,
            "--backend", "onnxruntime", *extra]


def test_bad_engine_directories(capsys, tmp_path, images):
    assert "does not exist" in _error(capsys, _gen(tmp_path / "nope", images[0]))
    assert "no config.json" in _error(capsys, _gen(tmp_path, images[0]))
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    assert "not an edgeprune engine directory" in _error(capsys, _gen(tmp_path, images[0]))


def test_bad_images_and_prompts(capsys, engine, images, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert "is empty" in _error(capsys, _gen(engine, empty))
    assert "not a readable image" in _error(capsys, _gen(engine, text))
    assert "does not exist" in _error(capsys, _gen(engine, tmp_path / "missing.jpg"))
    long_prompt = " ".join(["robot arm"] * 400)
    assert "--max-input-len 700" in _error(capsys, _gen(engine, images[0], long_prompt))
    assert "--max-output-len 40" in _error(capsys, _gen(engine, images[0], "hi", "--max-new-tokens", "41"))


def test_batch_larger_than_profile(capsys, engine, images):
    argv = ["generate", "--engine-dir", engine, "--prompt", "hi", "--backend", "onnxruntime"]
    for img in [*images, images[0]]:
        argv += ["--image", str(img)]
    assert "exceeds the engine's max batch 3" in _error(capsys, argv)


def test_engine_from_another_tensorrt_version(capsys, engine, images, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    copy = tmp_path / "engine"
    shutil.copytree(engine, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["engine"] = {"backend": "tensorrt-rtx", "version": "0.9.0", "built": True, "reason": None}
    cfg["vision"]["engine"] = "vision.engine"
    (copy / "vision.engine").write_bytes(b"\0" * 16)
    (copy / "config.json").write_text(json.dumps(cfg))
    argv = _gen(copy, images[0])
    argv[argv.index("onnxruntime")] = "tensorrt"
    assert "built with tensorrt-rtx 0.9.0" in _error(capsys, argv)


def test_tensorrt_backend_without_engines_or_gpu(capsys, engine, images):
    argv = _gen(engine, images[0])
    argv[argv.index("onnxruntime")] = "tensorrt"
    msg = _error(capsys, argv)
    assert "no vision engine" in msg or "GPU" in msg or "needs" in msg


def test_bench_writes_table_json_and_plot(engine, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    res = _run("bench", "--engine-dir", engine, "--backend", "onnxruntime", "--runs", "2", "--warmup", "0",
               "--new-tokens", "4", "--json", out, "--plot", png)
    assert res.returncode == 0, res.stderr
    assert "TTFT" in res.stdout and "hivtp" in res.stdout
    (r,) = json.loads(out.read_text())["results"]
    assert r["ttft_s"]["n"] == 2 and r["ttft_s"]["min"] <= r["ttft_s"]["median"] <= r["ttft_s"]["max"]
    assert r["keep"] == 64 and r["decode_tokens_per_s"]["median"] > 0 and r["peak_rss_mib"] > 50
    assert png.stat().st_size > 10_000


def test_backend_whose_library_is_absent(capsys, engine, images, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import -> ImportError
    msg = _error(capsys, _gen(engine, images[0]))
    assert "needs onnxruntime" in msg and "pip install onnxruntime" in msg
