"""Images and prompts to engine inputs.

Preprocessing and the chat format come from the checkpoint's own processor (saved by the build
into `<engine>/processor/`), because a different resize or template silently changes answers.
Engines without one (random-weight models) use the built-in equivalents: CLIP preprocessing
with the recorded mean/std and the tiny model's tokenizer, which speaks the same chat format.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from exporter.errors import UserError
from models.anyres import Layout

from .anyres import AnyresSpec
from .engine_dir import EngineDir


def load_image(image: Any):
    """PIL image from a path, bytes-free array or PIL image; bad input -> UserError."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.size == 0:
            raise UserError(f"image arrays must be (H, W, 3), got {image.shape}")
        return Image.fromarray(image.astype(np.uint8))
    path = Path(image)
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"image {path} is empty")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable image ({type(exc).__name__})") from None


def _clip_preprocess(img, size: int, mean, std) -> np.ndarray:
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return arr.transpose(2, 0, 1)


@dataclass
class AnyresBatch:
    """The views of a LLaVA-NeXT batch, per image: (n_b, 3, S, S) arrays, (h, w), layout, and
    the number of visual tokens the image will take in the prompt."""

    views: list[np.ndarray]
    sizes: list[tuple[int, int]]
    layouts: list[Layout]
    counts: list[int]


class Inputs:
    """Owns the processor/tokenizer of one engine directory."""

    def __init__(self, engine: EngineDir):
        self.engine = engine
        self.processor = None
        proc_dir = engine.path / "processor"
        source = proc_dir if proc_dir.is_dir() else None
        self.anyres = AnyresSpec.from_config(engine.anyres) if engine.anyres else None
        if source is None and engine.config.get("model", {}).get("source") in ("random-weights", None):
            from models import TINY_NAME, TINY_NEXT_NAME, ensure_tiny_checkpoint

            # built-in tokenizer with `<image>` and the chat template (+ the anyres image processor)
            source = ensure_tiny_checkpoint(TINY_NEXT_NAME if self.anyres else TINY_NAME)
            self.builtin = True
        else:
            self.builtin = False
        if source is None:
            raise UserError(f"{engine.path} has no processor/ folder: rebuild the engine directory")
        from transformers import AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(source, local_files_only=True)
        except Exception as exc:
            raise UserError(f"cannot load the processor in {source}: {str(exc).splitlines()[0]}") from None
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        dec = engine.decoder
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<image>")
        eos = dec["tokens"].get("eos_token_id") if not self.builtin else None
        self.eos_token_id = eos if eos is not None else self.tokenizer.eos_token_id
        pad = dec["tokens"].get("pad_token_id")
        self.pad_token_id = pad if pad is not None and pad < dec["vocab_size"] else (self.tokenizer.pad_token_id or 0)

    # ---- images -----------------------------------------------------------------------------
    def pixel_values(self, images: Sequence[Any], dtype: str) -> np.ndarray:
        imgs = [load_image(i) for i in images]
        pre = self.engine.vision.get("preprocess", {})
        size = int(pre.get("image_size", 336))
        if not self.builtin and getattr(self.processor, "image_processor", None) is not None:
            px = self.processor.image_processor(imgs, return_tensors="np")["pixel_values"]
        else:
            from models.specs import CLIP_MEAN, CLIP_STD

            px = np.stack([_clip_preprocess(i, size, pre.get("mean", CLIP_MEAN), pre.get("std", CLIP_STD))
                           for i in imgs])
        return np.asarray(px, dtype=np.float16 if dtype == "float16" else np.float32)

    def anyres_views(self, images: Sequence[Any], dtype: str) -> "AnyresBatch":
        """LLaVA-NeXT: each image's views (base first, then the crops row-major) from the
        checkpoint's processor, with the image's (h, w) and layout."""
        spec = self.anyres
        if spec is None:
            raise UserError(f"{self.engine.path} is not a LLaVA-NeXT engine directory (no vision.anyres)")
        imgs = [load_image(i) for i in images]
        proc = getattr(self.processor, "image_processor", None)
        points = getattr(proc, "image_grid_pinpoints", None)
        if points is None:
            raise UserError("this LLaVA-NeXT engine's processor is not an anyres image processor: rebuild it")
        if sorted(tuple(p) for p in points) != sorted(spec.pinpoints):
            raise UserError(f"the processor's image_grid_pinpoints {points} differ from the engine's "
                            f"{[list(p) for p in spec.pinpoints]}: the processor/ folder belongs to another model")
        out = proc(imgs, return_tensors="np")
        px, sizes = np.asarray(out["pixel_values"]), np.asarray(out["image_sizes"]).reshape(len(imgs), 2)
        views, shapes, layouts = [], [], []
        for b, img in enumerate(imgs):
            size = (int(sizes[b][0]), int(sizes[b][1]))
            if size != (img.size[1], img.size[0]):
                raise UserError(f"the processor reports image {b} as {size[0]}x{size[1]}, not its "
                                f"{img.size[1]}x{img.size[0]} pixels")
            layout = spec.layout(size)
            if px.ndim != 5 or px.shape[1] < layout.views:
                raise UserError(f"the processor gave {px.shape[1] if px.ndim == 5 else 1} views for image {b}, "
                                f"its {layout.rows}x{layout.cols} layout needs {layout.views}")
            views.append(px[b, : layout.views].astype(np.float16 if dtype == "float16" else np.float32))
            shapes.append(size)
            layouts.append(layout)
        return AnyresBatch(views, shapes, layouts, [spec.token_count(l, s) for l, s in zip(layouts, shapes)])

    # ---- prompts ----------------------------------------------------------------------------
    def chat_text(self, prompt: str) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("the prompt is empty")
        template = getattr(self.processor, "chat_template", None)
        if template and not self.builtin:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return self.engine.decoder.get("chat_format", "USER: <image>\n{prompt} ASSISTANT:").format(prompt=prompt)

    def prompt_ids(self, prompt: str, request: int, visual_tokens: int, count: int | None = None) -> list[int]:
        """Token ids with the single `<image>` replaced by the fake prompt-table ids of this
        request (vocab_size + request*K + j, tasks = 0: TensorRT-LLM's multimodal layout).
        K (`visual_tokens`) is the per-request stride of the table; the request uses its first
        `count` rows (default K; LLaVA-NeXT images differ in token count)."""
        count = visual_tokens if count is None else count
        if not 0 < count <= visual_tokens:
            raise UserError(f"an image of {count} visual tokens does not fit the engine's {visual_tokens} per request")
        ids = list(self.tokenizer(self.chat_text(prompt), add_special_tokens=True)["input_ids"])
        where = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(where) != 1:
            raise UserError(f"the prompt must hold exactly one image placeholder, found {len(where)}")
        vocab = int(self.engine.decoder["vocab_size"])
        fake = list(range(vocab + request * visual_tokens, vocab + request * visual_tokens + count))
        return ids[: where[0]] + fake + ids[where[0] + 1 :]

    def decode(self, ids: Sequence[int]) -> str:
        limit = len(self.tokenizer)
        return self.tokenizer.decode([int(i) for i in ids if 0 <= int(i) < limit], skip_special_tokens=True)
