"""Each stage as a Python function over typed options: preprocess, train, embed, evaluate,
the end-to-end baseline, the pipeline runner, info/validate (`inspect`), and `config`.

May import every subpackage below it; must not import `api` or `cli`, nor parse flags.
"""
