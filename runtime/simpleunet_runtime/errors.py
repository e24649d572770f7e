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


#: The exit codes of every console script (README "Exit codes"). argparse already exits 2 on a bad argument.
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def say(text: str, file=None) -> None:
    """print, escaping what the stream cannot show (``\\xe9``): a non-ASCII path under LANG=C or
    PYTHONIOENCODING=ascii must not end the run with a UnicodeEncodeError."""
    file = file or sys.stdout
    enc = getattr(file, "encoding", None) or "utf-8"
    print(text.encode(enc, "backslashreplace").decode(enc), file=file, flush=True)


def console_script(main: Callable[..., int] | None = None, *, interrupted: str = "") -> Callable[..., int]:
    """Wrap a console script's main, so that every CLI keeps one exit-code rule (README "Exit codes"): a
    ``SimpleUNetError`` (bad arguments or input) is one ``error:`` line and exit 2; Ctrl-C is one ``interrupted: WHY``
    line (WHY: the KeyboardInterrupt's message, else ``interrupted``) and exit 130; main itself returns 1 for a
    failure while running. A reader that stops early (``simpleunet-models | head -1``) ends it quietly with exit 0
    instead of a BrokenPipeError traceback (the recipe of Python's signal documentation)."""
    if main is None:
        return functools.partial(console_script, interrupted=interrupted)

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
        except SimpleUNetError as exc:
            say(f"error: {exc}", sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt as exc:
            why = exc.args[0] if exc.args else interrupted
            say(f"interrupted: {why}" if why else "interrupted", sys.stderr)
            return EXIT_INTERRUPTED

    return run
