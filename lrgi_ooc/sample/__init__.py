"""Neighbourhoods as plain index arrays (`onehop`, `multihop`), which nodes and which graph a
layer sees (`subgraph`), and the loader that turns index arrays into device tensors (`loader`).

May import `store`, `cluster` and `base`; must not import `ingest`, `csr`, `nn`, `stages`,
`api` or `cli` (a sampler knows nothing of models).
"""
