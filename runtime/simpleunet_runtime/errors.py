"""The runtime's error type: every user mistake surfaces as a ``SimpleUNetError`` with a one-line message."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable


class SimpleUNetError(Exception):
    """A problem the user can fix (bad file, bad argument, missing dependency). Its message is one line."""


def console_script(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a console script's main: a reader that stops early (``simpleunet-models | head -1``) ends it quietly
    with exit 0 instead of a BrokenPipeError traceback (the recipe of Python's signal documentation)."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0

    return run
