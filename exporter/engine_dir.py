"""Creating an engine directory atomically (its format is runtime.contract's).

A build fills a hidden staging directory beside the target and renames it into place only
when everything succeeded, so a failed or interrupted build never leaves a half-written
engine directory, and an existing good one is replaced only by a complete new one.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runtime.contract import is_engine_dir
from runtime.errors import UserError

STAGING_PREFIX = ".edgeprune-staging-"


def check_output_target(out: Path) -> None:
    """Refuse to overwrite anything that is not an earlier edgeprune build (or empty)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if any(out.iterdir()) and not is_engine_dir(out):
        raise UserError(f"--out {out} exists and is not an edgeprune engine directory; choose another path")


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
