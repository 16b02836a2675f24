"""The model: the LRGI block, propagation, predictors and loss (`model`), GAT attention
(`attention`), input projections of sparse rows (`sparseproj`), the compiled aggregation
kernel (`gatkernel`), a frozen block as numpy arrays (`blockweights`), trained weights in
the store (`trained`) and device choice (`device`).

May import `store`, `cluster` and `base`; must not import `ingest`, `csr`, `sample`,
`stages`, `api` or `cli` (a batch is anything with the loader's fields).
"""
