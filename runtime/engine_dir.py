"""Reading and validating an engine directory before anything heavy is loaded, so every bad
directory ends as one clear UserError instead of a traceback deep inside a backend."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import UserError

FORMAT = "edgeprune-engine-dir"
FORMAT_VERSION = 1


@dataclass
class EngineDir:
    path: Path
    config: dict[str, Any]

    @property
    def vision(self) -> dict[str, Any]:
        return self.config["vision"]

    @property
    def decoder(self) -> dict[str, Any]:
        return self.config["decoder"]

    @property
    def visual_tokens(self) -> int:
        """Prompt-table rows per request: K for LLaVA-1.5; for LLaVA-NeXT the most tokens any
        image can take (each request uses only its own image's count of them)."""
        return int(self.decoder["visual_tokens"])

    @property
    def anyres(self) -> dict[str, Any] | None:
        """`vision.anyres` of a LLaVA-NeXT engine directory, else None."""
        return self.vision.get("anyres") or None

    @property
    def max_batch(self) -> int:
        return int(min(self.config.get("max_batch", self.decoder["max_batch"]), self.decoder["max_batch"]))

    def file(self, name: str | None, what: str) -> Path:
        if not name:
            raise UserError(f"{self.path} has no {what}")
        path = self.path / name
        if not path.is_file():
            raise UserError(f"{self.path} is incomplete: {what} {name} is missing")
        return path


def open_engine_dir(path: str | Path) -> EngineDir:
    path = Path(path)
    if not path.exists():
        raise UserError(f"engine directory {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{path} is not a directory (pass the directory written by `python -m exporter build`)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path} is not an edgeprune engine directory (no config.json)")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {cfg_file}: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path} is not an edgeprune engine directory (config.json format is "
                        f"{config.get('format') if isinstance(config, dict) else None!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has engine-dir format version {config.get('format_version')}; this "
                        f"runtime reads version {FORMAT_VERSION}: rebuild it with this release")
    if not config.get("vision"):
        raise UserError(f"{path} has no vision section in config.json")
    if not config.get("decoder"):
        raise UserError(f"{path} was built without a decoder; rebuild it with `python -m exporter build` "
                        "from this release")
    anyres = config["vision"].get("anyres")
    if anyres and int(config["decoder"].get("visual_tokens", 0)) < int(anyres.get("max_tokens_per_image", 0)):
        raise UserError(f"{path}: the decoder's prompt table holds {config['decoder'].get('visual_tokens')} tokens per "
                        f"request, fewer than the {anyres['max_tokens_per_image']} an image can take: rebuild it")
    return EngineDir(path, config)
