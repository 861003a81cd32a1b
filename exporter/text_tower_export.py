"""Export of the CLIP text tower that HiPrune++ reads the prompt with: `text.onnx` (and
`text.engine`) plus its tokenizer in `text_tokenizer/`, so the runtime needs nothing outside the
engine directory to turn a prompt into the vision graph's `text_embeds`.

The graph maps token chunks (C, 77) int64 to their projected, un-normalised CLIP embeddings
(C, D) float32; chunking, averaging and normalising happen in `runtime.text_embeds`. There is no
attention mask input: CLIP's text transformer is causal and pools at the EOS position (HF's rule
for the checkpoint's config), so the padding after EOS cannot reach the pooled row. The graph is
always float32: the tower is a few percent of the vision tower's work, and fp16 CLIP text
activations would need the same float32 islands as the vision graph for no measurable gain.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from runtime.contract import RANDOM_WEIGHTS, Files, Tensors, TensorSpec, TextSection
from runtime.errors import UserError
from runtime.text_embeds import CONTEXT_LENGTH

ONNX_NAME = Files.TEXT_ONNX
ENGINE_NAME = Files.TEXT_ENGINE
TOKENIZER_DIR = Files.TEXT_TOKENIZER
MAX_CHUNKS = 8
RANDOM_SEED = 0  # the seed `models.load_model` gives random-weight models
CHUNKING = (
    "the prompt is tokenized without special tokens and without truncation and split into pieces "
    "of context_length - 2 tokens; each chunk is [bos] + piece + [eos], padded to context_length "
    "with pad_token_id (an empty prompt is one chunk [bos, eos, pad...]); the prompt embedding is "
    "the mean of its chunks' text_embeds, L2-normalised"
)


class ProjectedText(nn.Module):
    """input_ids (C, 77) -> text_projection(pooled EOS state) (C, D): the HF forward as is, so
    the graph pools exactly where the torch reference does."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tower(input_ids=input_ids).text_embeds


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def _tokenizer_from(path: Path):
    """The tokenizer saved in `path`, or None. transformers 5 builds an empty CLIPTokenizer for a
    folder with only a CLIP config.json, so the vocabulary files must actually be there."""
    from transformers import AutoTokenizer

    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:
        return None


def load_text_tower(loaded, override: str | None = None):
    """(CLIPTextModelWithProjection, tokenizer, source) for the model being built.

    Same search as the visual projection (`models.text_tower.resolve_text_tower`). A CLIP folder
    without a tokenizer (the tiny model's `clip/`) shares the LLaVA checkpoint's tokenizer, which
    is accepted only when its ids fit the tower's vocabulary. Random-weight builds with no
    `--text-tower` get a seeded ViT-L/14-336-shaped tower and the built-in tiny tokenizer.
    """
    from models.loading import CheckpointError
    from models.text_tower import RANDOM_SOURCE, random_text_tower, resolve_text_tower, text_tower_from_path

    if loaded.source == RANDOM_SOURCE and override is None:
        from models import ensure_tiny_checkpoint

        tokenizer = _tokenizer_from(ensure_tiny_checkpoint())
        return random_text_tower(tokenizer, RANDOM_SEED), tokenizer, RANDOM_SOURCE
    path = resolve_text_tower(loaded, override)
    tower = text_tower_from_path(path)
    tokenizer = _tokenizer_from(path)
    if tokenizer is None:
        shared = getattr(loaded.processor, "tokenizer", None)
        if shared is None and loaded.path is not None:
            shared = _tokenizer_from(loaded.path)
        if shared is not None and len(shared) <= tower.config.vocab_size:
            tokenizer = shared
    if tokenizer is None:
        raise CheckpointError(f"text tower {path} has no tokenizer (and the checkpoint's does not fit its "
                              f"vocabulary of {tower.config.vocab_size})")
    if len(tokenizer) > tower.config.vocab_size:
        raise CheckpointError(f"text tower {path}: its tokenizer has {len(tokenizer)} tokens but the tower "
                              f"embeds only {tower.config.vocab_size}")
    return tower, tokenizer, str(path)


def special_ids(tokenizer) -> dict[str, int]:
    """BOS/EOS around each chunk and the padding id. Padding repeats EOS (as OpenAI's CLIP
    tokenizer does): under either HF pooling rule (first EOS, or the legacy argmax of the ids
    for configs with eos_token_id 2) a trailing EOS can never move the pooled position, while
    another pad id can (the tiny tokenizer's <pad> = 3 outranks its </s> = 2 under argmax)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise UserError("the CLIP text tower's tokenizer has no BOS/EOS token")
    return {"bos": int(bos), "eos": int(eos), "pad": int(eos)}


def pooling_rule(tower) -> str:
    """HF's CLIPTextModel pools at argmax(input_ids) when eos_token_id == 2 (configs older
    than transformers PR #24773, including OpenAI's), else at the first eos_token_id."""
    eos = tower.config.eos_token_id
    return "argmax of input_ids (legacy eos_token_id 2)" if eos == 2 else f"first position of eos_token_id {eos}"


def export_text_tower(loaded, workdir: Path, *, override: str | None = None, precision: str = "fp32",
                      max_chunks: int = MAX_CHUNKS) -> TextSection:
    """Write text.onnx and text_tokenizer/ into `workdir`; return config.json's `text` section.
    `precision` is the build's; the graph is float32 whatever it is (see the module doc)."""
    import onnx

    from .onnx_export import ONNX_IR_VERSION, ONNX_OPSET

    tower, tokenizer, source = load_text_tower(loaded, override)
    tower.config._attn_implementation = "eager"  # plain MatMul/Softmax: every parser takes it
    if tower.config.max_position_embeddings < CONTEXT_LENGTH:
        from models.loading import CheckpointError

        raise CheckpointError(f"text tower {source} has {tower.config.max_position_embeddings} positions, "
                              f"fewer than CLIP's {CONTEXT_LENGTH}")
    ids = special_ids(tokenizer)
    workdir = Path(workdir)
    module = ProjectedText(tower).eval()
    example = torch.full((2, CONTEXT_LENGTH), ids["pad"], dtype=torch.int64)
    example[:, 0], example[:, 1] = ids["bos"], ids["eos"]
    path = workdir / ONNX_NAME
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), input_names=[Tensors.TEXT_INPUT_IDS], output_names=[Tensors.TEXT_EMBEDS],
            dynamic_axes={Tensors.TEXT_INPUT_IDS: {0: "chunks"}, Tensors.TEXT_EMBEDS: {0: "chunks"}},
            opset_version=ONNX_OPSET, dynamo=False,
        )
    model = onnx.load(str(path))
    model.ir_version = ONNX_IR_VERSION
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    tokenizer.save_pretrained(workdir / TOKENIZER_DIR)

    dim = int(tower.config.projection_dim)
    return TextSection(
        onnx=ONNX_NAME, engine=None, tokenizer=TOKENIZER_DIR, source=source, precision="fp32",
        build_precision=precision, context_length=CONTEXT_LENGTH, chunk_tokens=CONTEXT_LENGTH - 2,
        max_chunks=max_chunks, chunking=CHUNKING, pooling=pooling_rule(tower), bos_token_id=ids["bos"],
        eos_token_id=ids["eos"], pad_token_id=ids["pad"], embed_dim=dim,
        inputs=[TensorSpec(Tensors.TEXT_INPUT_IDS, [-1, CONTEXT_LENGTH], "int64")],
        outputs=[TensorSpec(Tensors.TEXT_EMBEDS, [-1, dim], "float32")],
        seed=RANDOM_SEED if source == RANDOM_WEIGHTS else None,
    )


def build_text_engine(backend, workdir: Path, section: TextSection, max_batch: int) -> TextSection:
    """Build text.engine from text.onnx; the profile admits every chunk of a full batch."""
    from .trt_compat import build_engine

    workdir = Path(workdir)
    n, rows = section.context_length, section.max_chunks * max_batch
    info = build_engine(
        backend, workdir / section.onnx, workdir / ENGINE_NAME,
        profiles=[{Tensors.TEXT_INPUT_IDS: ((1, n), (1, n), (rows, n))}], label="text engine",
    )
    return replace(section, engine=ENGINE_NAME, engine_io=info["io"], engine_profiles=info["profiles"])
