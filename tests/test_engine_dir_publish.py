"""Replacing an engine directory survives a crash at every step: a process is SIGKILLed right
before each step of the publish (no timing, an injected failure), then `--out` must hold one
complete build (old or new) and the next build's sweep must leave exactly that, with no staging
directory behind. Also: a concurrent build of the same --out fails at once, the umask is
honoured, and names too long for the staging suffix are refused up front."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import engine_dir as ed
from fakes.configs import engine_config
from runtime.contract import read_config, to_json

ROOT = Path(__file__).resolve().parents[1]

_CRASH = """
import os, signal, sys
from pathlib import Path
import exporter.engine_dir as ed
step, staging, out, exchange = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
ed._before_step = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == step else None
if not exchange:
    ed._exchange = lambda a, b: False
ours = staging.rename(staging.with_name(f"{ed.STAGING_PREFIX}engine-abcdefgh-{os.getpid()}"))  # this build's
ed.publish(ours, out)
"""


def _build_dir(path: Path, label: str) -> Path:
    """A complete engine directory (as far as config.json goes) tagged with `label`."""
    path.mkdir(parents=True)
    config = to_json(engine_config())
    config["command"] = label
    (path / "config.json").write_text(json.dumps(config))
    (path / "payload.bin").write_bytes(label.encode() * 1000)
    return path


def _label(path: Path) -> str | None:
    return read_config(path).command if path.exists() else None


# (step killed before, an old build exists, RENAME_EXCHANGE available, --out right after the
# crash, --out after the next build's sweep)
STEPS = [
    ("rename-new", False, True, None, None),  # nothing was published: no build at all
    ("exchange", True, True, "old", "old"),
    ("remove-old", True, True, "new", "new"),
    ("move-old-aside", True, False, "old", "old"),
    ("move-new-in", True, False, None, "old"),  # the fallback's window: the sweep restores the old build
    ("remove-old", True, False, "new", "new"),
]


@pytest.mark.parametrize("step,old,exchange,after_crash,after_sweep", STEPS)
def test_a_crash_at_any_step_keeps_one_complete_build(tmp_path, step, old, exchange, after_crash, after_sweep):
    out = tmp_path / "engine"
    if old:
        _build_dir(out, "old")
    staging = _build_dir(tmp_path / f"{ed.STAGING_PREFIX}engine-abcdefgh-0", "new")
    res = subprocess.run([sys.executable, "-c", _CRASH, step, str(staging), str(out), "1" if exchange else "0"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert _label(out) == after_crash
    ed.sweep(tmp_path)  # what the next build does first
    assert _label(out) == after_sweep
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(ed.STAGING_PREFIX)] == []


def test_publish_without_crash_replaces_and_cleans_up(tmp_path):
    out = _build_dir(tmp_path / "engine", "old")
    for exchange in (True, False):
        staging = _build_dir(tmp_path / f"{ed.STAGING_PREFIX}engine-abcdefgh-{os.getpid()}", f"new{exchange}")
        if not exchange:
            original, ed._exchange = ed._exchange, lambda a, b: False
        try:
            ed.publish(staging, out)
        finally:
            if not exchange:
                ed._exchange = original
        assert _label(out) == f"new{exchange}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]


def test_a_second_build_of_the_same_out_fails_clearly(tmp_path, capsys):
    from exporter.cli import main

    out = tmp_path / "e"
    lock = os.open(tmp_path / (ed.LOCK_PREFIX + "e"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another build holds --out
    try:
        code = main(["build", "--model", "tiny-llava", "--method", "none", "--backend", "onnx", "--no-decoder",
                     "--out", str(out)])
    finally:
        os.close(lock)
    assert code == 2
    assert "another build is writing --out" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def test_engine_directories_honour_the_umask(tmp_path):
    from exporter.cli import main

    out = tmp_path / "e"
    old = os.umask(0o022)
    try:
        assert main(["build", "--model", "tiny-llava", "--method", "none", "--backend", "onnx", "--no-decoder",
                     "--precision", "fp32", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "config.json").stat().st_mode & 0o777 == 0o644


def test_names_too_long_for_the_staging_suffix_are_refused(tmp_path, capsys):
    from exporter.cli import main

    out = tmp_path / ("e" * 230)
    assert main(["build", "--model", "tiny-llava", "--method", "none", "--backend", "onnx", "--out", str(out)]) == 2
    assert "would exceed the file system's 255" in capsys.readouterr().err
    parent_file = tmp_path / "file"
    parent_file.write_text("x")
    assert main(["build", "--model", "tiny-llava", "--method", "none", "--backend", "onnx",
                 "--out", str(parent_file / "e")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
