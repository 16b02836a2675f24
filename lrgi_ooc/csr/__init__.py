"""The out-of-core CSR build: `build` (in-process passes), `kernels` (numba), `tasks` (the
same passes as Dask tasks).

May import `store`, `cluster` and `base`; must not import `ingest`, `sample`, `nn`, `stages`,
`api` or `cli`.
"""
