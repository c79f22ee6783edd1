"""songrec: content-based "songs like this one" at data-lake scale (Spark, Petastorm, PyTorch DDP, hnswlib)."""

__version__ = "0.1.0"
