"""The runtime's error type: every user mistake surfaces as a ``SimpleUNetError`` with a one-line message."""
from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Callable


class SimpleUNetError(Exception):
    """A problem the user can fix (bad file, bad argument, missing dependency). Its message is one line."""


class SimpleUNetWarning(UserWarning):
    """Something runs but may give worse results than it should (e.g. an int8 file at risk on this CPU)."""


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SimpleUNetWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def console_script(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a console script's main: a reader that stops early (``simpleunet-models | head -1``) ends it quietly
    with exit 0 instead of a BrokenPipeError traceback (the recipe of Python's signal documentation)."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        warnings.showwarning = _one_line_warning  # the runtime's own warnings as one "warning:" line
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0

    return run
