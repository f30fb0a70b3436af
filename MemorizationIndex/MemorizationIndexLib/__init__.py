"""MemorizationIndex: audit generative MRI models for training-data memorization."""

__version__ = "0.1.0"
