"""The EdgePruneSelect TensorRT plugin: build it, find it, and prepare TensorRT-RTX for it.

Build layout (override the root with EDGEPRUNE_PLUGIN_BUILD_DIR):
    plugins/build/trt<MAJOR>/libedgeprune_plugin.so   plugin built against TensorRT <MAJOR> headers
    plugins/build/trt<MAJOR>/build-info.json          headers version, include dir, CUDA archs
    plugins/build/host/libedgeprune_host.so           host-compiled selection for the tests
    plugins/build/rtx-libs/libtensorrt_rtx.so         symlink TensorRT-RTX's ONNX parser dlopens
One directory per TensorRT major version because a plugin library only loads into the major
version whose headers built it (TensorRT-RTX 1.x implements the 10.x API).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

PLUGIN_NAME = "EdgePruneSelect"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "edgeprune"
LIBRARY_NAME = "libedgeprune_plugin.so"
HOST_LIBRARY_NAME = "libedgeprune_host.so"
DEFAULT_ARCHS = ("80", "86", "87", "89", "90")
SOURCE_DIR = Path(__file__).resolve().parent

__all__ = [
    "DEFAULT_ARCHS",
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "PluginBuildError",
    "build",
    "build_host_shim",
    "build_root",
    "find_library",
    "find_tensorrt_include",
    "rtx_env",
    "tensorrt_header_version",
]


class PluginBuildError(RuntimeError):
    """A build prerequisite is missing or the compiler failed; the message says which."""


def build_root() -> Path:
    return Path(os.environ.get("EDGEPRUNE_PLUGIN_BUILD_DIR", SOURCE_DIR / "build"))


def _major_of(backend: str | None) -> int | None:
    """TensorRT API major version a backend name stands for; None = any."""
    if backend is None:
        return None
    name = backend.strip().lower()
    if name in ("tensorrt-rtx", "tensorrt_rtx", "rtx"):
        return 10
    if name == "tensorrt":
        from runtime.errors import UserError
        from runtime.optional import load_tensorrt

        try:
            return load_tensorrt("tensorrt").major
        except UserError:  # not installed, or older than edgeprune supports
            return None
    match = re.fullmatch(r"(?:trt|tensorrt)?[-_ ]?(\d+)(?:\.\d+)*", name)
    if not match:
        raise ValueError(f"backend must be 'tensorrt', 'tensorrt-rtx' or a TensorRT version, got {backend!r}")
    return int(match.group(1))


def find_library(backend: str | None = None) -> Path | None:
    """The built plugin library for `backend` ('tensorrt' = the importable tensorrt's major,
    'tensorrt-rtx', '10', '10.3', 'trt11'; None = any build, newest major first), or None.
    EDGEPRUNE_PLUGIN_LIBRARY names a library explicitly and wins."""
    explicit = os.environ.get("EDGEPRUNE_PLUGIN_LIBRARY")
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    major = _major_of(backend)
    root = build_root()
    if major is not None:
        lib = root / f"trt{major}" / LIBRARY_NAME
        return lib if lib.is_file() else None
    found = []
    for lib in root.glob(f"trt*/{LIBRARY_NAME}"):
        m = re.fullmatch(r"trt(\d+)", lib.parent.name)
        if m:
            found.append((int(m.group(1)), lib))
    return max(found)[1] if found else None


def build_info(library: Path) -> dict:
    """What `build` recorded next to a library (headers version, archs); {} if nothing."""
    path = Path(library).parent / "build-info.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def find_tensorrt_include(explicit: str | os.PathLike | None = None) -> Path:
    """System TensorRT headers first (JetPack, desktop packages, TENSORRT_ROOT), then the
    headers shipped in the PyPI package kernel-lens."""
    if explicit is not None:
        path = Path(explicit)
        if not (path / "NvInferRuntime.h").is_file():
            raise PluginBuildError(f"--tensorrt-include {path}: no NvInferRuntime.h there")
        return path
    candidates = [Path(os.environ[v]) / "include" for v in ("TENSORRT_ROOT", "TRT_ROOT") if os.environ.get(v)]
    candidates += [
        Path("/usr/include/x86_64-linux-gnu"),
        Path("/usr/include/aarch64-linux-gnu"),
        Path("/usr/include"),
        Path("/usr/local/tensorrt/include"),
        Path("/opt/tensorrt/include"),
    ]
    for path in candidates:
        if (path / "NvInferRuntime.h").is_file():
            return path
    try:
        import kernel_lens  # noqa: PLC0415 - optional dependency
    except ImportError:
        kernel_lens = None
    if kernel_lens is not None:
        path = Path(kernel_lens.__file__).parent / "include" / "tensorrt"
        if (path / "NvInferRuntime.h").is_file():
            return path
    raise PluginBuildError(
        "TensorRT headers not found: install TensorRT or the PyPI package kernel-lens, "
        "or pass --tensorrt-include DIR"
    )


def tensorrt_header_version(include: Path) -> tuple[int, int, int]:
    text = (Path(include) / "NvInferVersion.h").read_text()

    def value(part: str) -> int:
        for pattern in (rf"#define\s+NV_TENSORRT_{part}\s+(\d+)", rf"#define\s+TRT_{part}_ENTERPRISE\s+(\d+)"):
            m = re.search(pattern, text)
            if m:
                return int(m.group(1))
        raise PluginBuildError(f"cannot read NV_TENSORRT_{part} from {include}/NvInferVersion.h")

    return value("MAJOR"), value("MINOR"), value("PATCH")


def parse_archs(archs: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """'87,90', 'sm_87;sm_90' or a list -> ['87', '90'] (CMake's CUDA_ARCHITECTURES form)."""
    if archs is None:
        return list(DEFAULT_ARCHS)
    items = re.split(r"[,; ]+", archs) if isinstance(archs, str) else list(archs)
    out = []
    for item in items:
        item = str(item).strip().lower().removeprefix("sm_").removeprefix("compute_")
        if not item:
            continue
        if not re.fullmatch(r"\d{2,3}[af]?", item):
            raise PluginBuildError(f"--arch: {item!r} is not a CUDA architecture like 87 or sm_90")
        out.append(item)
    if not out:
        raise PluginBuildError("--arch: no architecture given")
    return out


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and Path(root, "bin", "nvcc").is_file():
            return str(Path(root, "bin", "nvcc"))
    return None


def _cmake(build_dir: Path, defines: dict[str, str], nvcc: str | None, target: str) -> None:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginBuildError("cmake not found on PATH (needed to build the plugin)")
    args = [cmake, "-S", str(SOURCE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"]
    args += [f"-D{k}={v}" for k, v in defines.items()]
    env = dict(os.environ)
    if nvcc:
        args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        env.setdefault("CUDACXX", nvcc)
    steps = [args, [cmake, "--build", str(build_dir), "--target", target, "-j", str(os.cpu_count() or 2)]]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise PluginBuildError(f"`{' '.join(step[:2])} ...` failed:\n{tail}")


def build(
    tensorrt_include: str | os.PathLike | None = None,
    archs: str | list[str] | None = None,
) -> Path:
    """Compile the plugin for `archs` (default sm_80/86/87/89/90) against the TensorRT headers
    found by `find_tensorrt_include`; returns the library path (where find_library looks)."""
    include = find_tensorrt_include(tensorrt_include)
    version = tensorrt_header_version(include)
    arch_list = parse_archs(archs)
    nvcc = _nvcc()
    if nvcc is None:
        raise PluginBuildError("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda): the plugin needs the CUDA toolkit")
    build_dir = build_root() / f"trt{version[0]}"
    started = time.monotonic()
    _cmake(
        build_dir,
        {
            "EDGEPRUNE_TENSORRT_INCLUDE": str(include),
            "CMAKE_CUDA_ARCHITECTURES": ";".join(arch_list),
            "EDGEPRUNE_BUILD_HOST_SHIM": "OFF",
            "EDGEPRUNE_BUILD_PLUGIN": "ON",
        },
        nvcc,
        "edgeprune_plugin",
    )
    library = build_dir / LIBRARY_NAME
    info = {
        "library": str(library),
        "plugin": [PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE],
        "tensorrt_headers": ".".join(map(str, version)),
        "tensorrt_include": str(include),
        "cuda_archs": arch_list,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (build_dir / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
    return library


def build_host_shim(tensorrt_include: str | os.PathLike | None = None) -> Path:
    """The g++-compiled selection + field checks (no GPU code) that the host tests load."""
    include = find_tensorrt_include(tensorrt_include)
    build_dir = build_root() / "host"
    _cmake(
        build_dir,
        {"EDGEPRUNE_TENSORRT_INCLUDE": str(include), "EDGEPRUNE_BUILD_PLUGIN": "OFF", "EDGEPRUNE_BUILD_HOST_SHIM": "ON"},
        _nvcc(),
        "edgeprune_host",
    )
    return build_dir / HOST_LIBRARY_NAME


def provide_rtx_soname() -> bool:
    """Make TensorRT-RTX's parser find the unversioned libtensorrt_rtx.so without LD_LIBRARY_PATH:
    the parser's RPATH is $ORIGIN (the wheel's library folder), which dlopen searches first, so a
    symlink libtensorrt_rtx.so -> libtensorrt_rtx.so.1 there is enough. False where that folder
    is not writable (a system install): then LD_LIBRARY_PATH must provide it (`rtx_env`)."""
    try:
        import tensorrt_rtx_libs  # noqa: PLC0415 - optional dependency
    except ImportError:
        return False
    folder = Path(tensorrt_rtx_libs.__file__).parent
    link, target = folder / "libtensorrt_rtx.so", folder / "libtensorrt_rtx.so.1"
    if link.exists():
        return True
    if not target.is_file():
        return False
    try:
        tmp = folder / f".libtensorrt_rtx.so.{os.getpid()}"
        tmp.symlink_to(target.name)
        os.replace(tmp, link)  # atomic: concurrent builds race harmlessly
    except OSError:
        return False
    return True


def rtx_env() -> Path:
    """A folder holding `libtensorrt_rtx.so` -> the wheel's libtensorrt_rtx.so.1. TensorRT-RTX's
    ONNX parser dlopens that unversioned name when it instantiates a plugin, and the wheel does
    not ship it; put this folder on LD_LIBRARY_PATH before Python starts (the dynamic loader
    reads LD_LIBRARY_PATH only at process start)."""
    try:
        import tensorrt_rtx_libs  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise PluginBuildError("TensorRT-RTX is not installed (pip package tensorrt-rtx-cu13-libs)") from exc
    target = Path(tensorrt_rtx_libs.__file__).parent / "libtensorrt_rtx.so.1"
    if not target.is_file():
        raise PluginBuildError(f"{target} is missing from the tensorrt_rtx_libs wheel")
    folder = build_root() / "rtx-libs"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "libtensorrt_rtx.so"
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return folder
        link.unlink()
    link.symlink_to(target)
    return folder
