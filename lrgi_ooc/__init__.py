"""lrgi-ooc: out-of-core layer-wise self-supervised node embeddings (LRGI)."""
__version__ = "0.1.0"
