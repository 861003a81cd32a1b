"""Opening and writing an engine directory: the format/version rule, the one parse of
config.json, artifact hashes, and paths that stay inside the directory.

Every reader (runtime, `python -m exporter inspect`, scripts) opens a directory here and gets
typed sections back, so a bad directory ends as one clear EngineDirError before anything heavy
is loaded."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import EngineDirError
from .names import CONFIG_FILE, FORMAT, FORMAT_VERSION, OLDEST_READABLE
from .schema import SchemaError, parse, to_json
from .sections import AnyresSection, Artifact, DecoderSection, EngineConfig, TextSection, VisionSection


def _load_json(path: Path) -> Any:
    if not path.exists():
        raise EngineDirError(f"engine directory {path} does not exist")
    if not path.is_dir():
        raise EngineDirError(f"{path} is not a directory (pass the directory written by `python -m exporter build`)")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise EngineDirError(f"{path} is not an edgeprune engine directory (no {CONFIG_FILE})")
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineDirError(f"cannot read {cfg_file}: {exc}") from None


def check_format(path: Path, data: Any) -> None:
    """The reading rule (names.OLDEST_READABLE .. names.FORMAT_VERSION)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise EngineDirError(f"{path} is not an edgeprune engine directory ({CONFIG_FILE} format is {found!r})")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise EngineDirError(f"{path}/{CONFIG_FILE} has no valid format_version ({version!r})")
    if version > FORMAT_VERSION:
        raise EngineDirError(f"{path} was written by a newer edgeprune (engine-dir format {version}; this release "
                             f"reads {OLDEST_READABLE}..{FORMAT_VERSION}): upgrade edgeprune")
    if version < OLDEST_READABLE:
        raise EngineDirError(f"{path} was written by an older edgeprune (engine-dir format {version}; this release "
                             f"reads {OLDEST_READABLE}..{FORMAT_VERSION}): rebuild it with `python -m exporter build`")


def read_config(path: str | Path) -> EngineConfig:
    path = Path(path)
    data = _load_json(path)
    check_format(path, data)
    try:
        return parse(EngineConfig, data)
    except SchemaError as exc:
        raise EngineDirError(f"{path / CONFIG_FILE}: {exc}; rebuild the engine directory") from None


def is_engine_dir(path: str | Path) -> bool:
    """Whether `path` holds an edgeprune config.json of any version (safe to replace)."""
    try:
        data = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def inside(root: Path, name: str, what: str) -> Path:
    """`root / name` for a relative name that stays inside `root`; anything else (absolute,
    `..`, a symlink leading out) is refused before it is opened."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise EngineDirError(f"{root}/{CONFIG_FILE} names the {what} {name!r}, which is not a path inside the "
                             "engine directory")
    target = root / name
    real_root = root.resolve()
    real = target.resolve()
    if real != real_root and real_root not in real.parents:
        raise EngineDirError(f"{root}: the {what} {name} leads outside the engine directory (a symlink?)")
    return target


@dataclass(frozen=True)
class EngineDir:
    path: Path
    config: EngineConfig

    @property
    def vision(self) -> VisionSection:
        return self.config.vision

    @property
    def decoder(self) -> DecoderSection:
        if self.config.decoder is None:
            raise EngineDirError(f"{self.path} was built without a decoder (--no-decoder); rebuild it with one")
        return self.config.decoder

    @property
    def text(self) -> TextSection | None:
        return self.config.text

    @property
    def anyres(self) -> AnyresSection | None:
        return self.config.vision.anyres

    @property
    def visual_tokens(self) -> int:
        """Prompt-table rows per request: K for LLaVA-1.5; for LLaVA-NeXT the most tokens any
        image can take (each request uses only its own image's count of them)."""
        return self.decoder.visual_tokens

    @property
    def max_batch(self) -> int:
        return min(self.config.max_batch, self.decoder.max_batch)

    def file(self, name: str | None, what: str) -> Path:
        if not name:
            raise EngineDirError(f"{self.path} has no {what}")
        path = inside(self.path, name, what)
        if not path.is_file():
            raise EngineDirError(f"{self.path} is incomplete: the {what} {name} is missing")
        return path

    def folder(self, name: str | None, what: str) -> Path:
        if not name:
            raise EngineDirError(f"{self.path} has no {what}")
        path = inside(self.path, name, what)
        if not path.is_dir():
            raise EngineDirError(f"{self.path} is incomplete: the {what} {name}/ is missing")
        return path


def open_engine_dir(path: str | Path, *, need_decoder: bool = True) -> EngineDir:
    """Read and check an engine directory for running it."""
    path = Path(path)
    engine = EngineDir(path, read_config(path))
    if need_decoder:
        decoder = engine.decoder
        anyres = engine.anyres
        if anyres is not None and decoder.visual_tokens < anyres.max_tokens_per_image:
            raise EngineDirError(f"{path}: the decoder's prompt table holds {decoder.visual_tokens} tokens per request, "
                                 f"fewer than the {anyres.max_tokens_per_image} an image can take: rebuild it")
    return engine


# ---- writing (the exporter) ------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_records(root: Path) -> dict[str, Artifact]:
    """Size and sha256 of every file under `root` except config.json."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): Artifact(sha256_file(p), p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != CONFIG_FILE
    }


def write_config(root: Path, config: EngineConfig) -> EngineConfig:
    """Stamp the format, record every artifact and write config.json; returns what was written."""
    root = Path(root)
    config = replace(config, format=FORMAT, format_version=FORMAT_VERSION, artifacts=artifact_records(root))
    # every top-level section is written, null when absent ("text": null says "no text tower")
    data = {f.name: to_json(getattr(config, f.name)) for f in dataclasses.fields(config)}
    text = json.dumps(data, indent=2) + "\n"
    (root / CONFIG_FILE).write_text(text, encoding="utf-8")
    return config
