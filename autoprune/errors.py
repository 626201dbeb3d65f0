"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from collections.abc import Callable


class UserError(Exception):
    """Bad input: unknown name, malformed budget, missing data, wrong checkpoint, ..."""


def one_line(exc: BaseException) -> str:
    """'TypeName: first line of the message': how a failure in the user's own code is named in one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def import_factory(spec: str, what: str) -> Callable:
    """The callable `package.module:factory` names (a user's model or dataset factory); any failure to get it,
    the module's own import-time errors included, is one line naming `what` and the spec."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {what} factory '{spec}': {exc}") from exc
    except Exception as exc:  # the user's module itself fails while importing: chained for a debugger
        raise UserError(f"importing {what} factory '{spec}' failed: {one_line(exc)}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"cannot import {what} factory '{spec}': module '{module_name}' has no callable '{attr}'")
    return factory
