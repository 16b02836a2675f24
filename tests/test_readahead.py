"""read_ahead: same items in order, errors raised in the caller, early stops close the source."""
import threading

import pytest

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.base.readahead import read_ahead


def test_items_come_in_order_and_the_thread_ends():
    before = threading.active_count()
    assert list(read_ahead(iter(range(1000)), depth=2)) == list(range(1000))
    assert list(read_ahead([])) == []
    assert threading.active_count() == before


def test_an_error_of_the_source_reaches_the_caller_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise InputError("edges.parquet: column 'src' has 3 null node ids")
    got = []
    with pytest.raises(InputError, match="3 null node ids"):
        for x in read_ahead(source()):
            got.append(x)
    assert got == [1, 2]


def test_stopping_early_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            for i in range(10**9):
                yield i
        finally:
            closed.set()
    gen = read_ahead(source())
    assert next(gen) == 0
    gen.close()
    assert closed.wait(5)
