"""User-facing errors: each carries one line naming the file, row or field at fault.

The CLI prints ``error: <message>`` and exits with status 2 for these; anything else is a bug and keeps
its traceback.
"""

__all__ = ["CliplabError", "CliplabWarning"]


class CliplabError(Exception):
    """A mistake in the user's input (a file, a field, an argument), not a bug in cliplab."""


class CliplabWarning(UserWarning):
    """Something the user should know about an input that cliplab could still use (the CLI prints it as one
    ``note:`` line)."""
