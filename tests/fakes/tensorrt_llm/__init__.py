"""Recording stand-in for `tensorrt_llm` (put `tests/fakes` first on sys.path).

Only what edgeprune's adapter touches exists. `runtime.ModelRunner(Cpp)` records every call
and, instead of a TensorRT-LLM engine, runs the prompt-table contract the way TensorRT-LLM does
(flatten the table, prompt_vocab_size = table.shape[1], tasks parsed from the string) through
an edgeprune decoder.onnx named in the fake engine directory's config.json."""
from . import runtime

CALLS: list[tuple[str, dict]] = []
__version__ = "0.12.0-fake"


def mpi_rank() -> int:
    return 0
