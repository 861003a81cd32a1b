"""Images and prompts to engine inputs, from what the engine directory holds.

Preprocessing, the tokenizer and the chat template come from the checkpoint's own processor
files, which the build saves into `<engine>/processor/` (random-weight builds save the built-in
tiny model's), because a different resize or template silently changes answers. They run in
numpy/PIL/tokenizers (runtime/images.py, runtime/prompts.py), bit-exact with the Hugging Face
processor, so the device needs neither transformers nor torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .anyres import AnyresSpec, Layout
from .contract import EngineDir
from .errors import EngineDirError, UserError


@dataclass(frozen=True)
class AnyresBatch:
    """The views of a LLaVA-NeXT batch, per image: (n_b, 3, S, S) arrays, (h, w), layout, and
    the number of visual tokens the image will take in the prompt."""

    views: list[np.ndarray]
    sizes: list[tuple[int, int]]
    layouts: list[Layout]
    counts: list[int]


class Inputs:
    """Owns the image processor, tokenizer and chat template of one engine directory."""

    def __init__(self, engine: EngineDir):
        from .images import image_processor_from_dir
        from .prompts import ChatEncoder

        self.engine = engine
        folder = engine.folder(engine.vision.preprocess.processor, "processor folder")
        self.images = image_processor_from_dir(folder)
        self.prompts = ChatEncoder.from_dir(folder)
        self.anyres = AnyresSpec.from_section(engine.anyres) if engine.anyres else None
        if self.anyres is not None:
            points = getattr(self.images, "pinpoints", None)
            if points is None:
                raise EngineDirError(f"{engine.path}: this LLaVA-NeXT engine's processor is not an anyres image "
                                     "processor: rebuild it")
            if sorted(tuple(p) for p in points) != sorted(self.anyres.pinpoints):
                raise EngineDirError(f"the processor's image_grid_pinpoints {[list(p) for p in points]} differ from the "
                                     f"engine's {[list(p) for p in self.anyres.pinpoints]}: the processor/ folder "
                                     "belongs to another model")
        self.image_token_id = self.prompts.image_token_id

    @property
    def eos_token_id(self) -> int | None:
        """The decoder's end of sequence (random-weight decoders: the built-in tokenizer's)."""
        dec = self.engine.decoder
        eos = dec.tokens.eos_token_id if not dec.random_weights else None
        return eos if eos is not None else self.prompts.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        dec = self.engine.decoder
        pad = dec.tokens.pad_token_id
        return pad if pad is not None and pad < dec.vocab_size else (self.prompts.tokenizer.pad_token_id or 0)

    # ---- images -----------------------------------------------------------------------------
    def pixel_values(self, images: Sequence[Any], dtype: str) -> np.ndarray:
        from .images import load_image

        px = self.images([load_image(i) for i in images])
        return np.asarray(px, dtype=np.float16 if dtype == "float16" else np.float32)

    def anyres_views(self, images: Sequence[Any], dtype: str) -> AnyresBatch:
        """LLaVA-NeXT: each image's views (base first, then the crops row-major), with the image's
        (h, w), layout and visual token count."""
        from .images import load_image

        spec = self.anyres
        if spec is None:
            raise EngineDirError(f"{self.engine.path} is not a LLaVA-NeXT engine directory (no vision.anyres)")
        views, sizes, layouts = [], [], []
        for b, image in enumerate(images):
            pixels, size = self.images.views(load_image(image))
            layout = spec.layout(size)
            if pixels.shape[0] != layout.views:
                raise EngineDirError(f"the processor gave {pixels.shape[0]} views for image {b}, its "
                                     f"{layout.rows}x{layout.cols} layout needs {layout.views}")
            views.append(pixels.astype(np.float16 if dtype == "float16" else np.float32))
            sizes.append((int(size[0]), int(size[1])))
            layouts.append(layout)
        return AnyresBatch(views, sizes, layouts, [spec.token_count(l, s) for l, s in zip(layouts, sizes)])

    # ---- prompts ----------------------------------------------------------------------------
    def chat_text(self, prompt: str) -> str:
        """The checkpoint's chat template around one image and the prompt."""
        return self.prompts.image_prompt_text(prompt)

    def prompt_ids(self, prompt: str, request: int, visual_tokens: int, count: int | None = None) -> list[int]:
        """Token ids with the single `<image>` replaced by the fake prompt-table ids of this
        request (vocab_size + request*K + j, tasks = 0: TensorRT-LLM's multimodal layout).
        K (`visual_tokens`) is the per-request stride of the table; the request uses its first
        `count` rows (default K; LLaVA-NeXT images differ in token count)."""
        return self.fill_image(self.prompts.image_prompt_ids(prompt), request, visual_tokens, count)

    def fill_image(self, ids: Sequence[int], request: int, visual_tokens: int, count: int | None = None) -> list[int]:
        """`ids` (a rendered chat) with its one image placeholder replaced by this request's
        fake prompt-table ids (see `prompt_ids`)."""
        count = visual_tokens if count is None else count
        if not 0 < count <= visual_tokens:
            raise UserError(f"an image of {count} visual tokens does not fit the engine's {visual_tokens} per request")
        at = self.image_position(ids)
        vocab = self.engine.decoder.vocab_size
        fake = list(range(vocab + request * visual_tokens, vocab + request * visual_tokens + count))
        return list(ids[:at]) + fake + list(ids[at + 1:])

    def image_position(self, ids: Sequence[int]) -> int:
        where = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(where) != 1:
            raise UserError(f"the prompt must hold exactly one image placeholder, found {len(where)}")
        return where[0]

    def chat_ids(self, messages: Sequence[Any]) -> tuple[list[int], str]:
        """An OpenAI-style chat (possibly several turns) holding exactly one image part
        (`{"type": "image"}`, in a user message) -> its token ids with the one image placeholder,
        and the text prompt-aware pruning (HiPrune++) embeds: the text parts of the last user
        message, the question being answered now (joined by newlines; "" if it has none)."""
        from .prompts import checked_messages

        messages = checked_messages(messages)
        images = [(m["role"], part) for m in messages for part in (m.get("content") or []) if part["type"] == "image"]
        if len(images) != 1:
            raise UserError(f"this model takes exactly one image per request, the chat holds {len(images)}")
        if images[0][0] != "user":
            raise UserError(f"the image must be in a user message, not a {images[0][0]!r} one")
        ids = self.prompts.chat_ids(messages)
        self.image_position(ids)  # a template that dropped the image, or text spelling the placeholder
        users = [m for m in messages if m["role"] == "user"]
        texts = [p["text"] for p in (users[-1].get("content") or []) if p["type"] == "text"] if users else []
        return ids, "\n".join(texts)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids; ids past the tokenizer (random-weight decoders have a larger
        vocabulary than the built-in tokenizer) are dropped."""
        limit = len(self.prompts.tokenizer)
        return self.prompts.decode([int(i) for i in ids if 0 <= int(i) < limit])
