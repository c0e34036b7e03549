"""adx_runtime: score images from an adexport bundle without PyTorch.

Imports only numpy, Pillow, onnxruntime, faiss and the standard library (scikit-learn, scipy and
matplotlib for evaluation). Nothing happens at import time.
"""

__version__ = "0.1.0"
