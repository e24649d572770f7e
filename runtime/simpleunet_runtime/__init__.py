"""simpleunet_runtime: run exported SimpleUNet models with numpy + onnxruntime (or a TFLite runtime)."""
from .errors import SimpleUNetError

__version__ = "0.1.0"
__all__ = ["SimpleUNetError", "__version__"]
