"""Creating an engine directory so that `--out` always holds one complete build.

A build fills a hidden staging directory beside the target (`.edgeprune-staging-<name>-<tag>-<pid>`)
and publishes it only when everything succeeded:

- `--out` absent: one rename.
- `--out` present: one `renameat2(RENAME_EXCHANGE)` swaps the two directories atomically; the
  staging name then holds the old build, which is deleted. At every instant `--out` is either the
  complete old or the complete new build.
- File systems without RENAME_EXCHANGE: the old build is renamed aside (tag `old`) and the new one
  renamed in. A crash between the two leaves no `--out`; the next build's sweep renames the old
  build back before anything else, so no complete build is ever lost.

The sweep (start of every build) deletes staging directories whose process is gone, except an
`old` one whose `--out` is missing, which it restores. A lock file per `--out` makes a second
concurrent build of the same directory fail at once with a clear error. The staging directory
gets the umask's permissions (mkdtemp would make it 0700).

The steps of the publish call `_before_step(name)`, a no-op seam where tests inject a crash
(SIGKILL) at every step.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runtime.contract import is_engine_dir, read_config
from runtime.errors import EdgePruneError, UserError

STAGING_PREFIX = ".edgeprune-staging-"
LOCK_PREFIX = ".edgeprune-lock-"
OLD_TAG = "old"
NAME_MAX = 255
_RANDOM_AND_PID = 8 + 2 + 10  # mkdtemp's 8 characters, two dashes, a pid
RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _before_step(name: str) -> None:
    """Fault-injection seam (tests replace it); the steps are `rename-new`, `exchange`,
    `remove-old`, and without RENAME_EXCHANGE `move-old-aside`, `move-new-in`, `remove-old`."""


def check_output_target(out: Path) -> None:
    """Refuse to overwrite anything that is not an earlier edgeprune build (or empty), and names
    the file system cannot hold with the staging suffix."""
    out = Path(out)
    if len(out.name.encode()) + len(STAGING_PREFIX) + _RANDOM_AND_PID > NAME_MAX:
        raise UserError(f"--out name {out.name[:40]}... is {len(out.name)} characters; with the staging suffix it "
                        f"would exceed the file system's {NAME_MAX}: choose a shorter name")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a directory")
            break
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if any(out.iterdir()) and not is_engine_dir(out):
        raise UserError(f"--out {out} exists and is not an edgeprune engine directory; choose another path")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where the kernel, libc or file
    system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _complete(path: Path) -> bool:
    try:
        read_config(path)
        return True
    except EdgePruneError:
        return False


def _parse_staging(path: Path) -> tuple[str, str, int] | None:
    """(out name, tag, pid) of a staging directory name, else None."""
    head, _, pid = path.name.rpartition("-")
    name, _, tag = head.rpartition("-")
    if not path.name.startswith(STAGING_PREFIX) or not pid.isdigit() or not name:
        return None
    return name[len(STAGING_PREFIX):], tag, int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(parent: Path) -> None:
    """Clean up after builds that were killed: restore a set-aside old build whose `--out` is
    missing, delete every other staging directory of a dead process."""
    for stale in sorted(Path(parent).glob(STAGING_PREFIX + "*")):
        parsed = _parse_staging(stale)
        if parsed is None or _alive(parsed[2]):
            continue
        name, tag, _ = parsed
        out = stale.with_name(name)
        if tag == OLD_TAG and not out.exists() and _complete(stale):
            stale.rename(out)  # the only complete build: put it back
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _acquire(lock_path: Path, out: Path) -> int:
    """An exclusive flock on the lock file, which must still be the file at `lock_path` once
    locked (the holder unlinks it on release; a loser that opened the old file retries)."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"cannot write next to --out {out}: {exc.strerror or exc} ({out.parent})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another build is writing --out {out} right now; wait for it to finish or "
                            "choose another --out") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # locked a file the previous holder had already removed: try again


@contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """One build per --out at a time; the lock file lives only as long as the build (a killed
    build's lock is released by the kernel, and its file is reused by the next build)."""
    lock_path = out.with_name(LOCK_PREFIX + out.name)
    fd = _acquire(lock_path, out)
    try:
        yield
    finally:
        try:
            lock_path.unlink()
        except OSError:
            pass
        os.close(fd)


def publish(staging: Path, out: Path) -> None:
    """Replace `out` by the complete build in `staging` (see the module docstring)."""
    if not out.exists():
        _before_step("rename-new")
        staging.rename(out)
        return
    _before_step("exchange")
    if _exchange(staging, out):
        _before_step("remove-old")
        shutil.rmtree(staging, ignore_errors=True)  # the old build, under the staging name
        return
    pid = staging.name.rpartition("-")[2]
    old = out.with_name(f"{STAGING_PREFIX}{out.name}-{OLD_TAG}-{pid}")
    _before_step("move-old-aside")
    out.rename(old)
    _before_step("move-new-in")
    staging.rename(out)
    _before_step("remove-old")
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a staging directory; on normal exit it replaces `out` atomically, on any error or
    signal it is deleted and `out` is untouched."""
    out = Path(out).absolute()
    check_output_target(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the parent of --out {out}: {exc.strerror or exc}") from None
    with _build_lock(out):
        sweep(out.parent)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{out.name}-", suffix=f"-{os.getpid()}",
                                        dir=out.parent))
        os.chmod(staging, 0o777 & ~_umask())

        def _terminate(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            yield staging
            check_output_target(out)
            publish(staging, out)
        except OSError as exc:  # disk full, read-only file system, ...: one line, nothing left behind
            raise UserError(f"cannot write the engine directory {out}: {exc.strerror or exc}"
                            + (f" ({exc.filename})" if exc.filename else "")) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
