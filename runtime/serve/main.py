"""`python -m runtime serve`: load the engine directory, start the batcher and uvicorn."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import UserError
from ..optional import need

MIB = 1 << 20


def add_arguments(p: argparse.ArgumentParser, backends) -> None:
    p.add_argument("--engine-dir", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on stderr)")
    p.add_argument("--backend", default="auto", choices=backends)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    p.add_argument("--model-name", help="the model id clients send (default: the engine directory's name)")
    p.add_argument("--max-batch", type=int, help="requests per engine call (default and limit: the engine's max batch)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long the first waiting request waits for others to share its engine call")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond this get 503 + Retry-After")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds from arrival until a request is "
                   "cancelled and answered 504")
    p.add_argument("--max-image-bytes", type=int, default=20 * MIB, help="larger images get 413")
    p.add_argument("--allow-urls", action="store_true", help="fetch http(s) image URLs (refused by default)")
    p.add_argument("--allow-files", type=Path, metavar="DIR", help="accept local image paths inside DIR")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the engine directory's files against config.json's sha256")


def config_from(args):
    from .service import ServeConfig

    if args.max_batch is not None and args.max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queue < 1:
        raise UserError(f"--max-queue must be >= 1, got {args.max_queue}")
    if args.batch_window_ms < 0 or args.request_timeout <= 0 or args.max_image_bytes < 1:
        raise UserError("--batch-window-ms must be >= 0, --request-timeout and --max-image-bytes > 0")
    if args.allow_files is not None and not args.allow_files.is_dir():
        raise UserError(f"--allow-files {args.allow_files} is not a folder")
    name = args.model_name or Path(args.engine_dir).resolve().name
    return ServeConfig(name, args.max_batch, args.batch_window_ms / 1e3, args.max_queue, args.request_timeout,
                       args.max_image_bytes, args.allow_urls, args.allow_files)


def run_cli(args) -> int:
    uvicorn = need("uvicorn", "python -m runtime serve")
    need("fastapi", "python -m runtime serve")
    from ..pipeline import Pipeline
    from .app import create_app
    from .service import Service

    config = config_from(args)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pipe = Pipeline.from_dir(args.engine_dir, args.backend, threads=args.threads, verify=not args.no_verify)
    print(f"backend: {pipe.backends.describe()}", file=sys.stderr, flush=True)
    service = Service(pipe, config)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            for server in self.servers:  # the bound port, also when --port 0 picked it
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    print(f"listening on http://{host}:{port} (model {config.model_name!r})", file=sys.stderr,
                          flush=True)

    server = Server(uvicorn.Config(create_app(service), host=args.host, port=args.port, access_log=False,
                                           log_level=args.log_level, timeout_graceful_shutdown=5))
    try:
        server.run()
    finally:
        service.close()
    return 0 if server.started else 2
