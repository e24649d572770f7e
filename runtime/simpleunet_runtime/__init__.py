"""simpleunet_runtime: run exported SimpleUNet models with numpy + onnxruntime (or a TFLite runtime)."""
from .errors import SimpleUNetError
from .metadata import ModelMetadata
from .segmenter import Segmenter

__version__ = "0.1.0"
__all__ = ["ModelMetadata", "Segmenter", "SimpleUNetError", "__version__"]
