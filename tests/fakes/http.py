"""Small HTTP helpers for the server tests (stdlib only, so a test can send bodies no client
library would: malformed JSON, oversized uploads)."""
from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np


def data_url(path: Path | str, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def chat(url: str, prompt: str, **fields: Any) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]
    return {"messages": [{"role": "user", "content": content}], **fields}


def connection(base: str, timeout: float = 120.0) -> http.client.HTTPConnection:
    u = urlparse(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def request(base: str, method: str, path: str, body: bytes | dict | None = None,
            headers: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body or raw text)."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    conn = connection(base, timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
    finally:
        conn.close()


def write_blocky_images(root: Path, count: int, seed: int = 5) -> list[Path]:
    """`count` different blocky PNGs of varied sizes."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        h, w = int(rng.integers(200, 500)), int(rng.integers(200, 500))
        base = rng.integers(0, 255, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
        paths.append(root / f"blocky{i}.png")
        Image.fromarray(base).resize((w, h), Image.NEAREST).save(paths[-1])
    return paths
