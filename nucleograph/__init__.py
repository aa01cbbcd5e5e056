"""nucleograph: interpretable graph neural networks on H&E images, nucleus by nucleus."""

__version__ = "0.1.0"
