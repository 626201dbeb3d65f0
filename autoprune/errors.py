"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input: unknown name, malformed budget, missing data, wrong checkpoint, ..."""


def one_line(exc: BaseException) -> str:
    """'TypeName: first line of the message': how a failure in the user's own code is named in one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
