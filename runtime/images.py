"""Images -> the vision engine's `pixel_values`, in numpy and PIL only (no torch, no transformers).

The runtime must preprocess exactly as the checkpoint's Hugging Face processor does: a different
resize or crop silently changes what the model sees. "The HF stack" here is
`image_processor(transformers.image_utils.load_image(path))` with transformers' PIL-backed image
processors (`CLIPImageProcessorPil`, `LlavaNextImageProcessorPil`), which transformers picks when
torchvision is absent, as on a Jetson runtime. The torchvision ("fast") processors resize with
torch kernels and round differently; we match the PIL ones, bit for bit, because they are the
reference the checkpoint's own processor config describes and need nothing but PIL.

Loading (`load_image`) follows `transformers.image_utils.load_image`: `ImageOps.exif_transpose`
then `Image.convert("RGB")`. The processors then run `image_transforms.convert_to_rgb`, which
composites onto white only an image that still has an alpha band or a `transparency` entry.
Consequences we match on purpose although they are questionable:
- RGBA / LA / PA files lose their alpha in `load_image` (PIL's convert drops it), so transparent
  pixels show whatever colour they hold (often black); the processor's white compositing only
  ever applies to PIL images handed to it directly, never to files.
- P, L and RGB files with a tRNS chunk keep a `transparency` *colour* through convert("RGB");
  the processor then turns every pixel of that colour white, including opaque ones that happen to
  share it. A palette tRNS with partial alphas is dropped by PIL (with a warning) instead.
- 16-bit (I;16) and 32-bit (I) images are clipped, not scaled, to 0..255 by PIL's convert: most
  of a 16-bit photo becomes white.
- CMYK JPEGs use PIL's naive CMYK -> RGB (no ICC profile), like HF.
"""
from __future__ import annotations

import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError, one_line

# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
ARRAY_LAYOUTS = "(H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"


def load_image(image: Any) -> Image.Image:
    """A fully loaded, upright RGB PIL image from a path (str / PathLike), encoded image bytes
    (`bytes`, `bytearray`, `memoryview`: what an HTTP server decodes from a data URL), a binary
    file object, a PIL image, or an integer array (see `image_from_array`).

    Files and PIL images are treated exactly as `transformers.image_utils.load_image` treats them
    (EXIF orientation applied, then `convert("RGB")`; see the module doc for what that means for
    alpha, palettes and 16-bit images). Every way an input can be unusable (missing, empty, not an
    image, truncated, larger than PIL's decompression-bomb limit, wrong array dtype or layout) is
    one `UserError` line, never a silently black or garbled image. URLs and base64 strings (which
    transformers' loader also accepts) are refused: the caller fetches or decodes them.
    """
    if isinstance(image, Image.Image):
        return _guarded(lambda: upright_rgb(image), "the PIL image")
    if isinstance(image, np.ndarray):
        return image_from_array(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(bytes(image), "the image data")
    if isinstance(image, (str, os.PathLike)):
        return _decode_file(image)
    if callable(getattr(image, "read", None)):
        try:
            data = image.read()
        except OSError as exc:
            raise UserError(f"cannot read the image stream: {one_line(exc)}") from None
        if not isinstance(data, (bytes, bytearray)):
            raise UserError(f"the image file object returned {type(data).__name__}, not bytes: open it in binary mode")
        return _decode(bytes(data), "the image stream")
    raise UserError(f"an image must be a path, encoded image bytes, a binary file object, a PIL image or a "
                    f"uint8 array, not {type(image).__name__}")


def upright_rgb(image: Image.Image) -> Image.Image:
    """transformers' `load_image` on an opened image: EXIF orientation, then convert("RGB")."""
    return ImageOps.exif_transpose(image).convert("RGB")


def image_from_array(array: np.ndarray) -> Image.Image:
    """An RGB image from an integer array in 0..255 laid out (H, W) or (H, W, C), C in 1, 3, 4.

    Float arrays are refused (is 1.0 white or almost black?), as are other dtypes, values outside
    0..255 and channels-first layouts. (H, W, 4) is composited onto white with the formula HF's
    image processors use for arrays (`image_transforms.convert_to_rgb`: round(a*rgb + (1-a)*255)
    with a = alpha/255), so it equals `image_processor(array)`; grey arrays are repeated to RGB.
    """
    if array.size == 0:
        raise UserError(f"the image array is empty (shape {array.shape})")
    kind = array.dtype.kind
    if kind == "f":
        raise UserError(f"image arrays must hold integers 0..255, got {array.dtype}: a float array is ambiguous "
                        "(0..1 or 0..255?); convert it to uint8")
    if kind not in "ui":
        raise UserError(f"image arrays must be uint8 (or another integer type holding 0..255), got {array.dtype}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        hint = " (channels first? transpose it to channels last)" if array.ndim == 3 and array.shape[0] in (1, 3, 4) \
            else ""
        raise UserError(f"image arrays must be {ARRAY_LAYOUTS}, got shape {array.shape}{hint}")
    if array.dtype != np.uint8:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise UserError(f"image array values must lie in 0..255, got {low}..{high} ({array.dtype})")
        array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 4:
        alpha = array[..., 3:4] / 255
        array = np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _decode_file(path: str | os.PathLike) -> Image.Image:
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith(("data:", "http://", "https://")):
        raise UserError("image URLs are not fetched: download the image (or decode the data URL) and pass its bytes")
    path = Path(text)
    try:
        if not path.exists():
            raise UserError(f"image {path} does not exist")
        if not path.is_file():
            raise UserError(f"image {path} is not a file")
        if path.stat().st_size == 0:
            raise UserError(f"image {path} is empty")
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {one_line(exc)}") from None
    return _open(path, f"image {path}")


def _decode(data: bytes, source: str) -> Image.Image:
    if not data:
        raise UserError(f"{source} is empty")
    return _open(io.BytesIO(data), source)


def _open(fp, source: str) -> Image.Image:
    """Decode with PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) as a hard limit:
    PIL only warns between 1x and 2x the limit; we refuse from 1x."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # a palette tRNS with partial alphas is dropped by convert (as in HF); the module doc says so
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            with Image.open(fp) as opened:
                # the same limit again, without relying on the (process-global) warning filters
                limit = Image.MAX_IMAGE_PIXELS
                if limit and opened.width * opened.height > limit:
                    raise Image.DecompressionBombWarning(
                        f"{opened.width}x{opened.height} pixels exceed the limit of {limit} pixels")
                return upright_rgb(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{source} is too large to decode safely (decompression bomb?): {one_line(exc)}") from None
    except UnidentifiedImageError:
        raise UserError(f"{source} is not a readable image (no format PIL can read)") from None
    except OSError as exc:
        if isinstance(fp, Path) and not fp.is_file():
            raise UserError(f"cannot read {source}: {one_line(exc)}") from None
        raise UserError(f"{source} is truncated or damaged: {one_line(exc)}") from None
    except Exception as exc:  # PIL's decoders raise many types (SyntaxError, ValueError, struct.error, ...)
        raise UserError(f"{source} is damaged: {type(exc).__name__}: {one_line(exc)}") from None


def _guarded(convert, source: str) -> Image.Image:
    try:
        return convert()
    except Exception as exc:  # a lazily opened PIL image decodes here
        raise UserError(f"{source} cannot be decoded: {type(exc).__name__}: {one_line(exc)}") from None


# ---------------------------------------------------------------------------------------------
# the processor configuration
# ---------------------------------------------------------------------------------------------
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
BICUBIC = 3  # PIL's number; configs store `resample` as PIL's integer


class ImageConfig:
    """The preprocessing settings of one image processor config, with the class defaults of
    `CLIPImageProcessorPil` / `LlavaNextImageProcessorPil` for keys the config leaves out."""

    def __init__(self, config: Mapping[str, Any], *, anyres: bool = False):
        get = config.get
        try:
            self.do_resize = bool(get("do_resize", True))
            self.size = _size_dict(get("size", {"shortest_edge": 224}), square=False, name="size")
            self.resample = int(get("resample", BICUBIC))
            self.do_center_crop = bool(get("do_center_crop", True))
            crop = get("crop_size", {"height": 224, "width": 224})
            self.crop_size = None if crop is None else _size_dict(crop, square=True, name="crop_size")
            self.do_rescale = bool(get("do_rescale", True))
            self.rescale_factor = float(get("rescale_factor", 1 / 255))
            self.do_normalize = bool(get("do_normalize", True))
            self.image_mean = _channels(get("image_mean", OPENAI_CLIP_MEAN), "image_mean")
            self.image_std = _channels(get("image_std", OPENAI_CLIP_STD), "image_std")
            self.do_convert_rgb = bool(get("do_convert_rgb", True))
            points = get("image_grid_pinpoints", LLAVA_NEXT_PINPOINTS) if anyres else ()
            self.pinpoints = tuple((int(h), int(w)) for h, w in points)
        except (TypeError, ValueError) as exc:
            raise UserError(f"the image processor config is malformed: {one_line(exc)}") from None
        if self.resample not in range(6):
            raise UserError(f"the image processor config has resample={self.resample}, not a PIL filter (0..5)")
        if self.do_center_crop and (self.crop_size is None or "height" not in self.crop_size):
            raise UserError("the image processor config asks for a center crop without crop_size height/width")
        if anyres and not self.pinpoints:
            raise UserError("the LLaVA-NeXT image processor config has no image_grid_pinpoints")


def _size_dict(value: Any, *, square: bool, name: str) -> dict[str, int]:
    """HF's `get_size_dict`: an int is a square (crop_size) or the shortest edge (size), a pair is
    (height, width); dicts must be {shortest_edge} or {height, width} (the only kinds LLaVA uses)."""
    if isinstance(value, int):
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, Mapping) and set(value) in ({"shortest_edge"}, {"height", "width"}):
        return {k: int(v) for k, v in value.items()}
    raise UserError(f"the image processor config's {name} {value!r} is not supported "
                    "(use {\"shortest_edge\": N} or {\"height\": H, \"width\": W})")


def _channels(value: Any, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * 3
    if len(values) != 3:
        raise UserError(f"the image processor config's {name} has {len(values)} values, not 3")
    return values


# ---------------------------------------------------------------------------------------------
# the steps of `PilBackend` (transformers/image_processing_backends.py), on (H, W, 3) uint8 arrays
# ---------------------------------------------------------------------------------------------
def rgb_array(image: Image.Image, convert: bool) -> np.ndarray:
    """`PilBackend.process_image` for a PIL image: `image_transforms.convert_to_rgb` (white behind
    any alpha band or `transparency` entry) when `convert`, else the image as it is."""
    if not isinstance(image, Image.Image):
        raise UserError(f"image processors take PIL images (use load_image), not {type(image).__name__}")
    if convert:
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba).convert("RGB")
        else:
            image = image.convert("RGB")
    array = np.array(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise UserError(f"a {image.mode} image cannot be preprocessed with do_convert_rgb=false: convert it to RGB")
    return array


def resize(array: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """`image_transforms.resize`: through a PIL image (PIL takes (width, height))."""
    return np.asarray(Image.fromarray(array).resize((width, height), resample=resample))


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """`image_transforms.get_resize_output_image_size` with default_to_square=False: the short
    side becomes `shortest`, the long side int(shortest * long / short) (truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest * long / short)
    return (new_long, shortest) if width <= height else (shortest, new_long)


def output_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    if "shortest_edge" in size:
        return shortest_edge_size(height, width, size["shortest_edge"])
    return size["height"], size["width"]


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image_transforms.center_crop`: top-left at ((H - h) // 2, (W - w) // 2); a smaller image
    is first centred (ceil) on zeros."""
    h, w = array.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return array[top:top + height, left:left + width]
    new_h, new_w = max(height, h), max(width, w)
    canvas = np.zeros((new_h, new_w) + array.shape[2:], array.dtype)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas[pad_top:pad_top + h, pad_left:pad_left + w] = array
    top, left = top + pad_top, left + pad_left
    return canvas[max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)]


def finish(array: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    """Resize, center crop, rescale, normalize one (H, W, 3) uint8 image -> (3, h, w) float32:
    the per-image loop of `PilBackend._preprocess` (and of LLaVA-NeXT's per-view loop).

    The arithmetic is HF's, operation for operation: rescale multiplies in float64 and rounds to
    float32 once, normalize subtracts and divides in float32 (`image_transforms.rescale`,
    `image_transforms.normalize`)."""
    if cfg.do_resize:
        h, w = output_size(array.shape[0], array.shape[1], cfg.size)
        array = resize(array, h, w, cfg.resample)
    if cfg.do_center_crop:
        array = center_crop(array, cfg.crop_size["height"], cfg.crop_size["width"])
    out = array
    if cfg.do_rescale:
        out = (out.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    if cfg.do_normalize:
        if not np.issubdtype(out.dtype, np.floating):
            out = out.astype(np.float32)
        out = (out - np.array(cfg.image_mean, out.dtype)) / np.array(cfg.image_std, out.dtype)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# processors
# ---------------------------------------------------------------------------------------------
class ClipImageProcessor:
    """LLaVA-1.5's CLIP preprocessing (shortest edge -> center crop -> rescale -> normalize),
    equal bit for bit to transformers' `CLIPImageProcessorPil` with the same config. (The
    torchvision-backed `CLIPImageProcessor` resizes with torch and differs in the last bits;
    the PIL one is the reference, and the one transformers uses without torchvision.)"""

    def __init__(self, config: Mapping[str, Any] | None = None):
        self.config = ImageConfig(config or {})

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "ClipImageProcessor":
        return cls(read_image_processor_config(path)[1])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> (3, H, W) float32."""
        return finish(rgb_array(image, self.config.do_convert_rgb), self.config)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (B, 3, H, W) float32 `pixel_values`."""
        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            raise UserError("no images to preprocess")
        return np.stack([self.preprocess(image) for image in images])


def best_resolution(image_size: Sequence[int], pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (height, width) pinpoint LLaVA-NeXT uses for an image of (height, width) pixels:
    `image_processing_utils.select_best_resolution`. Each candidate scales the image to fit
    (min of the two ratios, sides truncated to int); the most effective pixels (capped at the
    original count) win, ties go to the least wasted area, then to the earlier pinpoint."""
    height, width = int(image_size[0]), int(image_size[1])
    if height <= 0 or width <= 0:
        raise UserError(f"an image of {height}x{width} pixels has no best resolution")
    best, best_effective, best_wasted = None, 0, float("inf")
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(cand_h), int(cand_w)), effective, wasted
    if best is None:
        raise UserError("the image processor has no usable image_grid_pinpoints")
    return best


def _patch_output_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """`image_processing_utils.get_patch_output_size`: fit inside the pinpoint, ceil'd."""
    target_h, target_w = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


class AnyresImageProcessor:
    """LLaVA-NeXT's views of an image, equal bit for bit to transformers'
    `LlavaNextImageProcessorPil`: the whole image squashed to S x S (the base view), then the
    image fitted into its best pinpoint (aspect kept, zero padding centred), cut into S x S crops
    row-major; every view then goes through the CLIP steps (`finish`)."""

    def __init__(self, config: Mapping[str, Any] | None = None):
        self.config = ImageConfig(config or {}, anyres=True)
        cfg = self.config
        if "height" in cfg.size:
            self.base = (cfg.size["height"], cfg.size["width"])
        else:
            self.base = (cfg.size["shortest_edge"],) * 2
        if cfg.crop_size is not None and cfg.crop_size.get("height"):
            self.view_size = cfg.crop_size["height"]
        else:
            self.view_size = cfg.size.get("height") or cfg.size["shortest_edge"]

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "AnyresImageProcessor":
        return cls(read_image_processor_config(path)[1])

    @property
    def pinpoints(self) -> tuple[tuple[int, int], ...]:
        return self.config.pinpoints

    def views(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        """(n_views, 3, S, S) float32, base view first then the crops row-major, and the image's
        (height, width) (HF's `image_sizes`; HF pads a batch to its largest view count, this
        returns the image's own views only)."""
        cfg = self.config
        array = rgb_array(image, cfg.do_convert_rgb)
        height, width = array.shape[:2]
        target = best_resolution((height, width), cfg.pinpoints)
        new_h, new_w = _patch_output_size(height, width, target)
        fitted = resize(array, new_h, new_w, cfg.resample)
        # HF recomputes the fitted size from the resized image before padding; so do we
        new_h, new_w = _patch_output_size(fitted.shape[0], fitted.shape[1], target)
        top, extra_h = divmod(target[0] - new_h, 2)
        left, extra_w = divmod(target[1] - new_w, 2)
        padded = np.pad(fitted, ((top, top + extra_h), (left, left + extra_w), (0, 0)))
        step = self.view_size
        crops = [padded[i:i + step, j:j + step] for i in range(0, padded.shape[0], step)
                 for j in range(0, padded.shape[1], step)]
        base = resize(array, self.base[0], self.base[1], cfg.resample)
        stacked = np.stack([finish(view, cfg) for view in [base, *crops]])
        return stacked, (int(height), int(width))

    def __call__(self, images: Sequence[Image.Image]) -> list[tuple[np.ndarray, tuple[int, int]]]:
        if isinstance(images, Image.Image):
            images = [images]
        return [self.views(image) for image in images]


# ---------------------------------------------------------------------------------------------
# from an engine directory's processor files
# ---------------------------------------------------------------------------------------------
PROCESSORS = {"CLIPImageProcessor": ClipImageProcessor, "LlavaNextImageProcessor": AnyresImageProcessor}


def read_image_processor_config(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(file, image processor section) from a processor folder: `processor_config.json`'s
    "image_processor" (transformers 5), else the older flat `preprocessor_config.json`."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"processor folder {folder} does not exist")
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        file = folder / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{file} is not valid JSON: {one_line(exc)}") from None
        section = data.get(key) if key and isinstance(data, dict) else data
        if isinstance(section, dict):
            return file, section
    raise UserError(f"{folder} has no image processor config (processor_config.json with an \"image_processor\" "
                    "section, or preprocessor_config.json)")


def image_processor_from_dir(path: str | os.PathLike) -> ClipImageProcessor | AnyresImageProcessor:
    """The processor an engine directory's processor folder declares (`image_processor_type`,
    with or without transformers' "Pil"/"Fast" suffix)."""
    file, section = read_image_processor_config(path)
    kind = str(section.get("image_processor_type", ""))
    base = kind.removesuffix("Fast").removesuffix("Pil")
    if base not in PROCESSORS:
        known = ", ".join(PROCESSORS)
        raise UserError(f"{file}: image_processor_type {kind or '(missing)'!r} is not supported here (known: {known})")
    return PROCESSORS[base](section)
