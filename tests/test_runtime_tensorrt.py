"""The TensorRT backend's plumbing without a GPU: tests/fakes/gpu stands in for `tensorrt` and
cuda-python (engines that run the directory's ONNX graphs by address, over host "device"
memory), so shapes, tensor addresses, profiles, device buffers and the KV cache kept on the
device are exercised for real, and the tokens must equal the ONNX Runtime backend's."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runtime import Pipeline
from runtime.contract import artifact_records, to_json
from runtime.errors import UserError

PROMPTS = ["what is in the picture?", "how many objects are on the table?", "describe the image"]


def _with_engines(engine: str, root: Path, tensorrt, capability: str = "8.6") -> Path:
    """A copy of an ONNX-only engine directory whose config says TensorRT 10.3 engines were
    built for a GPU of `capability`, with fake engine files that run its graphs."""
    copy = root / "engine"
    shutil.copytree(engine, copy)
    cfg = json.loads((copy / "config.json").read_text())
    tensorrt.write_fake_engine(copy / "vision.engine", copy / "vision.onnx")
    tensorrt.write_fake_engine(copy / "decoder.engine", copy / "decoder.onnx", profiles=2)
    cfg["engine"] = {"backend": "tensorrt", "version": "10.3.0", "built": True, "reason": None,
                     "compute_capability": capability}
    cfg["vision"]["engine"], cfg["decoder"]["engine"] = "vision.engine", "decoder.engine"
    cfg["artifacts"] = to_json(artifact_records(copy))  # the fake engines are artifacts like the real ones
    (copy / "config.json").write_text(json.dumps(cfg))
    return copy


def test_tensorrt_backend_equals_onnxruntime(engine, images, fake_gpu, tmp_path):
    tensorrt, cudart = fake_gpu
    copy = _with_engines(engine, tmp_path, tensorrt)
    ours = Pipeline.from_dir(engine, backend="onnxruntime")
    trt = Pipeline.from_dir(copy, backend="auto")  # the engines can run here: auto picks TensorRT
    assert (trt.backends.vision, trt.backends.decoder) == ("tensorrt", "tensorrt")
    want = ours.generate(images, PROMPTS, max_new_tokens=12)
    got = trt.generate(images, PROMPTS, max_new_tokens=12)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.kept_indices for g in got] == [w.kept_indices for w in want]
    # prefill on profile 0 (the context's first), decode on profile 1; the KV cache never came back
    # to the host: vision features + kept indices, then only each step's logits
    assert tensorrt.PROFILES_SET == [1]
    steps = len(got[0].timings.decode_s) + 1
    assert cudart.CALLS["cudaMemcpyDeviceToHost"] == 2 + steps
    again = trt.generate(images[0], PROMPTS[0], max_new_tokens=12)  # a new batch goes back to prefill
    assert tensorrt.PROFILES_SET == [1, 0, 1] and again.token_ids == want[0].token_ids


def test_auto_falls_back_when_the_engines_cannot_run_here(engine, fake_gpu, tmp_path):
    tensorrt, _ = fake_gpu
    copy = _with_engines(engine, tmp_path, tensorrt, capability="8.7")  # built on an Orin
    pipe = Pipeline.from_dir(copy, backend="auto")
    assert pipe.backends.vision == "onnxruntime"
    assert "built for compute capability 8.7, this GPU is 8.6" in pipe.backends.reason
    with pytest.raises(UserError, match="compute capability 8.7, this GPU is 8.6"):
        Pipeline.from_dir(copy, backend="tensorrt")


def test_engines_from_another_tensorrt_version_are_refused(engine, fake_gpu, tmp_path):
    tensorrt, _ = fake_gpu
    copy = _with_engines(engine, tmp_path, tensorrt)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["engine"]["version"] = "10.14.1"
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="built with tensorrt 10.14.1 but 10.3.0 is installed"):
        Pipeline.from_dir(copy, backend="tensorrt")
