"""Converters: importers and exporters between a graph store and other formats (Parquet,
.npy, CSV), streamed in bounded memory through `GraphStore` methods only.
Must not import stages, api or cli (only base, store and cluster).
"""
