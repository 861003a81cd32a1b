"""`python -m runtime serve` as a child process, for tests, benchmarks and scripts: start it on
a free loopback port, wait until it listens, stop it. Its stderr (one line per request) goes to
a log file that `log()` reads back."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError

LISTENING = re.compile(r"listening on (http://[^ ]+)")


class ServerProcess:
    def __init__(self, engine_dir, *args: str, log_path: str | Path, backend: str = "onnxruntime",
                 startup_timeout_s: float = 180.0, cwd: str | Path | None = None, env: dict | None = None):
        self.log_path = Path(log_path)
        argv = [sys.executable, "-m", "runtime", "serve", "--engine-dir", str(engine_dir), "--host", "127.0.0.1",
                "--port", "0", "--backend", backend, *args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})})
        self.url = self._wait(startup_timeout_s)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                self.stop()
                raise UserError(f"the server exited with code {self.proc.returncode}: {self.log()[-2000:]}")
            time.sleep(0.1)
        self.stop()
        raise UserError(f"the server did not start within {timeout_s:g} s: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
