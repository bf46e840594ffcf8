"""Errors a user can act on. The CLI prints them as one line and exits with code 2, never a traceback."""

from __future__ import annotations

import reprlib
import sys
from typing import Any

EXCERPT_CHARS = 60  # of a bad value quoted in a message: enough to recognise it, never the whole of a huge one
_SHORT = reprlib.Repr()  # (its keyword arguments are Python 3.12's)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxset = 3, 6, 6, 6, 6
_SHORT.maxstring = _SHORT.maxother = EXCERPT_CHARS


def say(line: str) -> None:
    """``line`` on stderr in one write: Python's stderr passes each write straight to the fd, so ``print`` would
    send the text and its newline separately, and mpirun's per-line tags (``[1,0]<stderr>:``) could land between
    them when another rank's output comes in the meantime."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class UserError(Exception):
    """A mistake in the user's input (config, env id, paths). Its message names the problem in one line."""

    exit_code = 2


class JobRefused(UserError):
    """A refusal that every rank of the job learnt together, from a collective (the run dir in use, a replay
    that does not fit): every rank leaves with exit 2 and none waits in a collective. ``quiet`` on every rank but
    rank 0, which says it once for the job."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the full length named, for quoting user input."""
    if isinstance(value, (str, bytes)):
        return clip(repr(value), limit)
    try:  # reprlib: a bounded repr of containers, however big or deeply nested (aliases of aliases)
        text = _SHORT.repr(value)
    except ValueError:  # an int past Python's int-to-str digit limit cannot even be printed
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    return text if len(text) <= limit else f"{text[:limit]}..."


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, with its full length named where it was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def one_line(message: str, limit: int = 1000) -> str:
    """The message as a single line of at most about ``limit`` characters (the CLI's last guard)."""
    flat = " ".join(str(message).split())
    return flat if len(flat) <= limit else f"{flat[:limit]}... (message cut at {limit} characters)"
