"""midigen: a reproducible pipeline for training and comparing symbolic-music transformers."""

__version__ = "0.1.0"
