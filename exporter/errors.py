"""Errors a user can fix: the project's one hierarchy lives in `runtime.errors` (the part that is
installed on the device); the exporter uses the same classes."""
from runtime.errors import EdgePruneError, MissingDependency, UserError

__all__ = ["EdgePruneError", "MissingDependency", "UserError"]
