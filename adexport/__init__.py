"""adexport: the training and export side (PyTorch). Importing this package imports no torch."""

from adx_runtime import __version__

__all__ = ["__version__"]
