"""The runtime's error type: every user mistake surfaces as a ``SimpleUNetError`` with a one-line message."""


class SimpleUNetError(Exception):
    """A problem the user can fix (bad file, bad argument, missing dependency). Its message is one line."""
