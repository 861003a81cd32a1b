"""What a loaded graph or engine declares must be what config.json says it is: the same input and
output names, dtypes and static dimensions (K among them). An engine directory whose files were
swapped for another build's (another method, another K) then fails to load with one clear line
instead of running with the wrong prompt-table stride."""
from __future__ import annotations

from typing import Iterable, Sequence

from ..contract import TensorSpec
from ..errors import EngineDirError


def check_io(what: str, declared: Iterable[TensorSpec], actual: dict[str, tuple[Sequence, str]]) -> None:
    """`actual`: name -> (shape with -1 or None for dynamic axes, numpy dtype name)."""
    for spec in declared:
        if spec.name not in actual:
            raise EngineDirError(f"the {what} has no tensor {spec.name!r}, which config.json declares: the file belongs "
                                 "to another build; rebuild the engine directory")
        shape, dtype = actual[spec.name]
        if dtype != spec.dtype:
            raise EngineDirError(f"the {what}'s {spec.name} is {dtype}, config.json says {spec.dtype}: the file belongs "
                                 "to another build; rebuild the engine directory")
        dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
        if len(dims) != len(spec.shape) or any(a != b for a, b in zip(dims, spec.shape) if a >= 0 and b >= 0):
            raise EngineDirError(f"the {what}'s {spec.name} has shape {dims}, config.json says {spec.shape}: the file "
                                 "belongs to another build; rebuild the engine directory")
