"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input: unknown name, malformed budget, missing data, wrong checkpoint, ..."""
