"""Engine directories for runtime tests, built once per test session with the real
`python -m exporter build` entry point (in-process: no interpreter start-up per build)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def build_engine_dir(root: Path, method: str, keep: int = 64, precision: str = "fp32", max_batch: int = 3,
                     extra: tuple[str, ...] = ()) -> str:
    from exporter.cli import main

    out = Path(root) / f"{method}-k{keep}-{precision}-b{max_batch}"
    if not (out / "config.json").exists():
        argv = ["build", "--model", "tiny-llava", "--method", method, "--precision", precision,
                "--max-batch", str(max_batch), "--backend", "onnx", "--max-input-len", "700",
                "--max-output-len", "40", "--out", str(out), *extra]
        if method != "none":
            argv += ["--keep", str(keep)]
        assert main(argv) == 0, f"build failed: {argv}"
    return str(out)


def build_next_engine_dir(root: Path, method: str, keep: int | None) -> str:
    """A tiny-llava-next engine directory: fp32 (so ONNX Runtime and torch agree on every kept
    index), max batch 6."""
    from exporter.cli import main

    out = Path(root) / f"next-{method}-k{keep}-fp32-b6"
    if not (out / "config.json").exists():
        argv = ["build", "--model", "tiny-llava-next", "--method", method, "--precision", "fp32", "--max-batch", "6",
                "--backend", "onnx", "--max-output-len", "40", "--out", str(out)]
        argv += ["--keep", str(keep)] if keep is not None else []
        assert main(argv) == 0, f"build failed: {argv}"
    return str(out)


def write_images(root: Path) -> list[Path]:
    """Three different, blocky (attention-friendly) images of different sizes."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    paths = []
    for i, (h, w) in enumerate(((336, 336), (300, 420), (480, 360))):
        base = rng.integers(0, 255, (h // 12, w // 12, 3), dtype=np.uint8)
        paths.append(root / f"img{i}.png")
        Image.fromarray(base).resize((w, h), Image.NEAREST).save(paths[-1])
    return paths
