"""The project's one error hierarchy. Everything a user can fix (bad input, a broken or foreign
engine directory, a missing optional library) is an `EdgePruneError`; every command line turns it
into a single `error: ...` line and exit code 2 through `report`, and nothing else is caught.

It lives in the runtime because the runtime is the part installed on the device; the exporter,
the plugins and the scripts import it from here.
"""
from __future__ import annotations

import sys
from typing import TextIO

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class EdgePruneError(Exception):
    """Something the user can fix; the message is the whole story (no traceback is shown)."""


class UserError(EdgePruneError):
    """Bad input: an argument, an image, a prompt, a file."""


class EngineDirError(UserError):
    """An engine directory that is missing, foreign, incomplete, damaged or from another release."""


class MissingDependency(UserError):
    """An optional library that the chosen backend needs is not importable here."""

    def __init__(self, module: str, needed_for: str, hint: str, reason: str = ""):
        self.module, self.needed_for, self.hint = module, needed_for, hint
        why = f" ({reason})" if reason else ""
        super().__init__(f"{needed_for} needs {module}, which is not importable here{why}: {hint}")


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, else its type's name: safe for
    exceptions raised by third-party libraries with empty or multi-line messages."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def stdout_closed() -> int:
    """The reader of stdout went away (`| head`): say nothing more, and keep Python's exit-time
    flush from printing a BrokenPipeError (the recipe of Python's signal documentation)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 1


def report(exc: BaseException, stream: TextIO | None = None, interrupted: str = "interrupted") -> int:
    """Print one `error:` line for an EdgePruneError (or `interrupted` for Ctrl-C / SIGTERM) and
    return the exit code. The one place a command line formats an error."""
    stream = stream if stream is not None else sys.stderr
    if isinstance(exc, KeyboardInterrupt):
        print(f"error: {interrupted}", file=stream)
        return EXIT_INTERRUPTED
    print(f"error: {one_line(exc)}", file=stream)
    return EXIT_USER_ERROR
