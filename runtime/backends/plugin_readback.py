"""The EdgePruneSelect fields a TensorRT plan really holds, read back after deserialising it and
compared with what config.json records: a plan built for another method, K or layers fails to
load with one line instead of selecting the wrong tokens.

TensorRT has no API for a deserialised plugin's fields, but the plugin is ours: its creator
records the fields TensorRT hands it at `TensorRTPhase::kRUNTIME` (the ones serialised in the
plan) and returns them as JSON from `edgeprune_runtime_fields_json` (plugins/src/fields.cpp).
TensorRT loads the plugin from the plan itself (`plugins_to_serialize`), from a path we are not
told, so the loaded objects are searched for that symbol: dl_iterate_phdr lists them and
dlopen(RTLD_NOLOAD) reopens each without loading anything new. Standard library only (the
runtime's rule)."""
from __future__ import annotations

import ctypes
import json
import os
import struct
import threading
from typing import Any, Callable, Iterable, TypeVar

from ..errors import EngineDirError

RECORDS_SYMBOL = "edgeprune_runtime_fields_json"
CLEAR_SYMBOL = "edgeprune_runtime_fields_clear"

_LOCK = threading.Lock()  # one deserialisation between a clear and a read
T = TypeVar("T")


class _PhdrInfo(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_void_p), ("name", ctypes.c_char_p), ("phdr", ctypes.c_void_p),
                ("phnum", ctypes.c_uint16)]


_VISIT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t, ctypes.c_void_p)


def _loaded_objects() -> list[str]:
    names: list[str] = []

    def visit(info, _size, _data) -> int:
        name = info.contents.name
        if name:
            names.append(os.fsdecode(name))
        return 0

    try:
        iterate = ctypes.CDLL(None).dl_iterate_phdr
    except (OSError, AttributeError):  # not glibc/ELF: nothing to read back
        return []
    callback = _VISIT(visit)
    iterate(callback, None)
    return names


def recorder_libraries() -> list[ctypes.CDLL]:
    """Every loaded library that exports the recorder: the plugin copies TensorRT loaded from
    plans (and, in tests, the host shim)."""
    found = []
    for name in _loaded_objects():
        try:
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            getattr(lib, RECORDS_SYMBOL)
        except (OSError, AttributeError):
            continue
        found.append(lib)
    return found


def clear() -> None:
    for lib in recorder_libraries():
        getattr(lib, CLEAR_SYMBOL)()


def records() -> list[dict[str, Any]] | None:
    """[{"layer", "fields": {name: [values]}}] of every plugin created at run time since the last
    clear(); None when no loaded library has the recorder (nothing can be read back)."""
    libs = recorder_libraries()
    if not libs:
        return None
    out: list[dict[str, Any]] = []
    for lib in libs:
        fn = getattr(lib, RECORDS_SYMBOL)
        fn.restype = ctypes.c_char_p
        out += json.loads(fn().decode())
    return out


def deserialise_and_read(load: Callable[[], T]) -> tuple[T, list[dict[str, Any]] | None]:
    """`load()` (a deserialisation) with the records of exactly the plugins it created."""
    with _LOCK:
        clear()
        result = load()
        return result, records()


def _normalised(fields: dict[str, Any]) -> dict[str, tuple]:
    """Every value as a tuple; floats rounded to float32, as the plugin field carries them."""
    def one(v: Any) -> Any:
        return struct.unpack("f", struct.pack("f", v))[0] if isinstance(v, float) else int(v)

    return {k: tuple(one(x) for x in (v if isinstance(v, (list, tuple)) else [v])) for k, v in fields.items()}


def _describe(fields: dict[str, tuple], keys: Iterable[str]) -> str:
    return " ".join(f"{k}={','.join(format(x, 'g') for x in fields[k]) if k in fields else '-'}" for k in keys)


def check(expected: list[dict[str, Any]], recorded: list[dict[str, Any]] | None, what: str) -> None:
    """Each plugin the engine created must carry the fields of one that config.json records, and
    each recorded in config.json must be in the engine. Nothing recorded (a plugin library without
    the recorder, or no plugin node): nothing to compare."""
    if not recorded:
        return
    want = [_normalised(f) for f in expected]
    got = [_normalised(r["fields"]) for r in recorded]
    stray = [g for g in got if g not in want]
    missing = [w for w in want if w not in got]
    if not stray and not missing:
        return
    have, need = (stray or got)[0], (missing or want)[0]
    keys = [k for k in sorted(set(have) | set(need)) if have.get(k) != need.get(k)] or sorted(need)
    raise EngineDirError(f"{what}'s EdgePruneSelect plugin has {_describe(have, keys)} but config.json records "
                         f"{_describe(need, keys)}: the engine was built for another selection; rebuild the "
                         "engine directory")


def expected_fields(plugin) -> list[dict[str, Any]]:
    """The fields config.json's vision.plugin section records: one set, or one per anyres branch."""
    if plugin.branches:
        return [b.fields for b in plugin.branches]
    return [plugin.fields]
