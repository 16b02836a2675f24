"""Neighbourhoods as plain index arrays (`onehop`, `multihop`), which nodes and which graph a
layer sees (`subgraph`), the loader that turns index arrays into device tensors (`loader`),
and the row cache it reads through when the table is larger than memory (`rowreader`).

May import `store`, `cluster` and `base`; must not import `ingest`, `csr`, `nn`, `stages`,
`api` or `cli` (a sampler knows nothing of models).
"""
