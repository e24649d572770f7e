"""The export's error type: a ``SimpleUNetError`` (one-line message), so the CLI prints it without a traceback."""
from simpleunet_runtime.errors import SimpleUNetError


class ExportError(SimpleUNetError):
    """A conversion or check step of the export failed, or its inputs are unusable."""
