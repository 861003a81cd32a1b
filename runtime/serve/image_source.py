"""An `image_url` -> the image's encoded bytes, refusing what the server was not told to allow.

- `data:image/<type>;base64,<data>`: always accepted (what OpenAI clients send for local
  images); the size is checked on the base64 length before decoding.
- `http://` / `https://`: refused unless the server runs with `--allow-urls` (the server would
  otherwise fetch whatever a client names, from wherever it runs); then fetched with a timeout
  and the same byte limit.
- `file://PATH` or a plain absolute path: only inside the folder given with `--allow-files DIR`,
  after resolving symlinks.
Whether the bytes are an image is decided by the pipeline's loader (runtime/images.py)."""
from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .protocol import ApiError

FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int
    allow_urls: bool = False
    allow_files: Path | None = None


def _too_big(size: int, policy: ImagePolicy) -> ApiError:
    return ApiError(413, f"the image is {size} bytes, more than the server's --max-image-bytes {policy.max_bytes}",
                    param="messages", code="image_too_large")


def _bad(message: str) -> ApiError:
    return ApiError(400, message, param="messages", code="invalid_image")


def image_bytes(url: str, policy: ImagePolicy) -> bytes:
    if url.startswith("data:"):
        return _data_url(url, policy)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        if not policy.allow_urls:
            raise _bad("http(s) image URLs are refused by this server (start it with --allow-urls to fetch them); "
                       "send the image as a data: URL")
        return _fetch(url, policy)
    if scheme == "file" or (scheme == "" and url.startswith("/")):
        return _local_file(unquote(urlparse(url).path) if scheme == "file" else url, policy)
    raise _bad(f"unsupported image URL {url[:40]!r}: use a data: URL (base64 PNG, JPEG or WebP)")


def _data_url(url: str, policy: ImagePolicy) -> bytes:
    header, comma, data = url.partition(",")
    if not comma:
        raise _bad("a data: URL needs a comma before its data")
    media, *params = header[len("data:"):].split(";")
    if not media.lower().startswith("image/"):
        raise _bad(f"the data: URL holds {media or 'text/plain'}, not an image (image/png, image/jpeg, image/webp)")
    if "base64" not in (p.lower() for p in params):
        raise _bad("the image data: URL must be base64-encoded (data:image/png;base64,...)")
    estimate = len(data) * 3 // 4
    if estimate > policy.max_bytes + 2:
        raise _too_big(estimate, policy)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the image data: URL is not valid base64") from None
    if len(raw) > policy.max_bytes:
        raise _too_big(len(raw), policy)
    if not raw:
        raise _bad("the image data: URL is empty")
    return raw


def _fetch(url: str, policy: ImagePolicy) -> bytes:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 (allowed by flag)
            raw = response.read(policy.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _bad(f"cannot fetch the image URL: {exc}") from None
    if len(raw) > policy.max_bytes:
        raise _too_big(len(raw), policy)
    return raw


def _local_file(path: str, policy: ImagePolicy) -> bytes:
    if policy.allow_files is None:
        raise ApiError(403, "local image paths are refused by this server (start it with --allow-files DIR)",
                       param="messages", code="file_not_allowed")
    root = policy.allow_files.resolve()
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise ApiError(403, f"{path} is outside the folder this server reads images from (--allow-files {root})",
                       param="messages", code="file_not_allowed")
    try:
        size = real.stat().st_size
        if size > policy.max_bytes:
            raise _too_big(size, policy)
        return real.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _bad(f"image file {path} does not exist") from None
    except PermissionError:
        raise _bad(f"image file {path} cannot be read") from None
