"""simpleunet: the toolkit (train, export, benchmark). The runtime lives in ``simpleunet_runtime``."""
__version__ = "0.1.0"
