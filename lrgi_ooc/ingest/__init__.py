"""Inputs as validated streams: edge lists (`edges`), node tables (`tables`), arrays inside
.npz archives (`npz_stream`), whole datasets (`datasets`: npz, OGB) and the DC-CSBM generator
(`synth`).

May import `store`, `cluster` and `base`; must not import `csr`, `sample`, `nn`, `stages`,
`api` or `cli`.
"""
