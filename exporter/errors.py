"""Errors a user can fix. The command lines print them as one line and exit with code 2."""


class UserError(Exception):
    """Bad input or a missing optional dependency: the message is the whole story."""
