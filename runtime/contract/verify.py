"""Artifact integrity: every file the runtime is about to use must have the size and sha256 that
config.json recorded, so a corrupted or edited decoder never silently changes the answers.

Hashing a 7B decoder takes tens of seconds on a Jetson, so a verified file is remembered in
`.verified.json` inside the engine directory, keyed by its name, size and modification time (the
hash is recomputed whenever either changes). A read-only directory simply gets no cache. The
cache guards against corruption and accidental edits, not against someone who can also rewrite
config.json.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from ..errors import EngineDirError
from .engine_dir import EngineDir, inside, sha256_file

CACHE_FILE = ".verified.json"


def _load_cache(root: Path) -> dict:
    try:
        data = json.loads((root / CACHE_FILE).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(root: Path, cache: dict) -> None:
    tmp = root / (CACHE_FILE + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(cache, indent=0), encoding="utf-8")
        os.replace(tmp, root / CACHE_FILE)
    except OSError:  # a read-only engine directory: verify again next time
        try:
            tmp.unlink()
        except OSError:
            pass


def verify(engine: EngineDir, names: Iterable[str] | None = None, *, use_cache: bool = True) -> list[str]:
    """Check `names` (default: every recorded artifact) against config.json's size and sha256;
    returns the names checked. The first mismatch, a missing file or a file config.json does not
    record is one EngineDirError naming it."""
    recorded = engine.config.artifacts
    wanted = sorted(set(recorded) if names is None else set(names))
    cache = _load_cache(engine.path) if use_cache else {}
    changed = False
    for name in wanted:
        record = recorded.get(name)
        if record is None:
            raise EngineDirError(f"{engine.path}: {name} is not among the artifacts config.json records; "
                                 "the directory was changed after the build: rebuild it")
        path = inside(engine.path, name, "artifact")
        try:
            stat = path.stat()
        except OSError:
            raise EngineDirError(f"{engine.path} is incomplete: the artifact {name} is missing") from None
        if stat.st_size != record.bytes:
            raise EngineDirError(f"{engine.path}: {name} is {stat.st_size} bytes but config.json records "
                                 f"{record.bytes}: the file is damaged or was replaced; rebuild the engine "
                                 "directory (or pass --no-verify if you changed it on purpose)")
        key = [stat.st_size, stat.st_mtime_ns, record.sha256]
        if cache.get(name) == key:
            continue
        if sha256_file(path) != record.sha256:
            raise EngineDirError(f"{engine.path}: {name} does not match the sha256 config.json records: the file "
                                 "is damaged or was edited; rebuild the engine directory (or pass --no-verify if "
                                 "you changed it on purpose)")
        cache[name] = key
        changed = True
    if changed and use_cache:
        _save_cache(engine.path, cache)
    return wanted


def files_under(engine: EngineDir, folder: str | None) -> list[str]:
    """The recorded artifacts inside `folder` (e.g. processor/)."""
    if not folder:
        return []
    prefix = folder.rstrip("/") + "/"
    return [name for name in engine.config.artifacts if name.startswith(prefix)]
