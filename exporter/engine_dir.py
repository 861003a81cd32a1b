"""The engine directory: its config.json format and its atomic creation.

A build fills a hidden staging directory beside the target and renames it into place only
when everything succeeded, so a failed or interrupted build never leaves a half-written
engine directory, and an existing good one is replaced only by a complete new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

FORMAT = "edgeprune-engine-dir"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
STAGING_PREFIX = ".edgeprune-staging-"


def is_engine_dir(path: Path) -> bool:
    try:
        return json.loads((Path(path) / CONFIG_NAME).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_config(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"engine directory {path} does not exist")
    cfg_file = path / CONFIG_NAME
    try:
        config = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is not an edgeprune engine directory (no {CONFIG_NAME})") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {cfg_file}: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path} is not an edgeprune engine directory ({CONFIG_NAME} is foreign)")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"{path} was written by a newer edgeprune (format {config['format_version']}); upgrade edgeprune"
        )
    return config


def check_output_target(out: Path) -> None:
    """Refuse to overwrite anything that is not an earlier edgeprune build (or empty)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if any(out.iterdir()) and not is_engine_dir(out):
        raise UserError(f"--out {out} exists and is not an edgeprune engine directory; choose another path")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_hashes(root: Path) -> dict[str, str]:
    root = Path(root)
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != CONFIG_NAME
    }


def write_config(root: Path, config: dict[str, Any]) -> None:
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    config["artifacts"] = artifact_hashes(root)
    (Path(root) / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")


def _remove_stale_staging(parent: Path) -> None:
    """Staging directories of builds killed with SIGKILL (nothing else escapes cleanup)."""
    for stale in parent.glob(STAGING_PREFIX + "*"):
        try:
            pid = int(stale.name.rsplit("-", 1)[-1])
            os.kill(pid, 0)
            continue  # that build is still running
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            continue


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a staging directory; on normal exit it replaces `out` atomically, on any error
    or signal it is deleted and `out` is untouched."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{out.name}-", suffix=f"-{os.getpid()}", dir=out.parent))

    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield staging
        check_output_target(out)
        if out.exists():
            old = out.with_name(f"{STAGING_PREFIX}{out.name}-old-{os.getpid()}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
