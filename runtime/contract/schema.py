"""Typed records <-> JSON, with one clear error for a missing or mistyped field.

config.json sections are frozen dataclasses; `parse` checks a JSON value against the dataclass's
annotations (int, float, str, bool, dict, list[...], X | None, nested records) and names the exact
path of the first problem ("config.json: decoder.max_input_len must be an integer, got 'abc'").
Unknown keys are ignored, so a reader accepts additions made within one format version; a field
with a default may be absent. Written by hand because it is ~100 lines and the runtime must not
depend on pydantic-sized libraries on a Jetson.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache
from typing import Any, TypeVar, Union

from ..errors import EngineDirError

T = TypeVar("T")
_NONE = type(None)


class SchemaError(EngineDirError):
    """A config.json value does not have the shape the contract declares."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and _NONE in options:
            return None
        errors = []
        for option in options:
            if option is _NONE:
                continue
            try:
                return _convert(value, option, where)
            except SchemaError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, where)
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where} must be a list, got {_kind(value)}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where} must be an object, got {_kind(value)}")
        args = typing.get_args(hint)
        item = args[1] if args else Any
        return {str(k): _convert(v, item, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where} must be true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where} must be an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where} must be a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where} must be a string, got {_kind(value)}")
        return value
    raise TypeError(f"schema: unsupported annotation {hint!r} at {where}")  # a bug in the contract


def parse(cls: type[T], data: Any, where: str = "") -> T:
    """`data` (decoded JSON) -> a `cls` record, or SchemaError naming the first bad field by its
    dotted path below `where` ("" = the top level)."""
    if not isinstance(data, dict):
        raise SchemaError(f"{where or 'the top level'} must be an object, got {_kind(data)}")
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        path = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise SchemaError(f"{path} is missing")
        values[f.name] = _convert(data[f.name], hints[f.name], path)
    record = cls(**values)
    check = getattr(record, "validate", None)
    if check is not None:
        check(where)
    return record


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return value == f.default
    if f.default_factory is not dataclasses.MISSING:
        return value == f.default_factory()
    return False


def to_json(record: Any) -> Any:
    """A record (or list/dict of them) -> plain JSON values, fields in declaration order. Optional
    fields that hold their default are left out (`parse` puts the default back), so a section
    carries only what applies to it: no VisionZip counts in a HiPrune budget, no plugin keys
    without a plugin."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_json(getattr(record, f.name)) for f in dataclasses.fields(record)
                if not _is_default(f, getattr(record, f.name))}
    if isinstance(record, (list, tuple)):
        return [to_json(v) for v in record]
    if isinstance(record, dict):
        return {str(k): to_json(v) for k, v in record.items()}
    return record
