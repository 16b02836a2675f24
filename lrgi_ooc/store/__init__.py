"""The store on disk: the only code that spells a Zarr key or a chunk path.

`layout` (keys, arrays, chunk files, stage records), `publish` (staging a new store and
moving it into place), `chunkmap` (memory maps over chunk files), `rows` (`pread`s of
rows from a thread pool), `fileio` (exact reads), `view` (the read-only view users get
from `lrgi_ooc.open_store`), `lock` (one writer per store). Must not import anything above `base`.
"""
