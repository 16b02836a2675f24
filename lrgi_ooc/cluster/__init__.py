"""Running a pass's tasks in-process or on Dask: clients, per-worker caches, thread limits.

Knows nothing of graphs or of the store's layout. Must not import anything above `base`.
"""
