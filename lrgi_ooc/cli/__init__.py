"""argparse only: each command turns flags into `lrgi_ooc.api` keyword arguments and prints
the result (the console script `lrgi-ooc` is `lrgi_ooc.cli.main:main`).

It sits on top: nothing in the package but `lrgi_ooc.__main__` imports it, and it must not
import a stage's private names or compute anything itself.
"""
