"""`python -m plugins build [--tensorrt-include DIR] [--arch LIST]` prints the library path;
`python -m plugins host` builds the host test shim; `python -m plugins rtx-env` prints the
folder to put on LD_LIBRARY_PATH for TensorRT-RTX's parser; `python -m plugins find` prints
the library find_library returns. Errors are one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import sys

from . import PluginBuildError, build, build_host_shim, find_library, rtx_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the TensorRT plugin library with CMake + nvcc")
    b.add_argument("--tensorrt-include", metavar="DIR", help="TensorRT include dir (default: system, then kernel-lens)")
    b.add_argument("--arch", metavar="LIST", help="CUDA archs, e.g. 87 or 80,86,87,89,90 (default: all five)")
    h = sub.add_parser("host", help="compile the host-only test shim with g++")
    h.add_argument("--tensorrt-include", metavar="DIR")
    sub.add_parser("rtx-env", help="print a folder with libtensorrt_rtx.so for LD_LIBRARY_PATH")
    f = sub.add_parser("find", help="print the built library for a backend")
    f.add_argument("--backend", default=None, help="tensorrt, tensorrt-rtx or a TensorRT version")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build(args.tensorrt_include, args.arch))
        elif args.command == "host":
            print(build_host_shim(args.tensorrt_include))
        elif args.command == "rtx-env":
            print(rtx_env())
        else:
            lib = find_library(args.backend)
            if lib is None:
                raise PluginBuildError("no plugin library built for that backend; run `python -m plugins build`")
            print(lib)
    except (PluginBuildError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()
        print(f"error: {first[0] if first else type(exc).__name__}", file=sys.stderr)
        if len(first) > 1:
            print("\n".join(first[1:]), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
