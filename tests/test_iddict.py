"""The string dictionary of the in-memory remap against a Python dict and np.unique."""
import numpy as np
import pyarrow as pa

from lrgi_ooc.store.idcols import StrCol
from lrgi_ooc.store.iddict import StrDict, sorted_ranks


def _col(strings):
    return StrCol.from_arrow(pa.array(strings, pa.binary()))


def _random_strings(rng, n, distinct):
    pool = [b"u" * int(rng.integers(0, 4)) + rng.bytes(int(rng.integers(1, 40)))
            for _ in range(distinct)]
    pool = list(dict.fromkeys(pool))
    return [pool[i] for i in rng.integers(0, len(pool), n)]


def test_entries_are_first_seen_order_across_blocks_and_growth():
    rng = np.random.default_rng(0)
    strings = _random_strings(rng, 300_000, 120_000)   # grows the table several times
    d = StrDict(capacity=16)
    got = np.concatenate([d.add(_col(strings[a:a + 70_000]))
                          for a in range(0, len(strings), 70_000)])
    ref: dict[bytes, int] = {}
    expect = np.array([ref.setdefault(s, len(ref)) for s in strings])
    np.testing.assert_array_equal(got, expect)
    assert len(d) == len(ref)
    ent = d.strings()
    assert [ent.value(i) for i in range(len(ent))] == list(ref)


def test_prefixes_and_equal_lengths_are_told_apart():
    strings = [b"ab", b"abc", b"a", b"abd", b"ab", b"abc", b"b", b"a\x00", b"a"]
    d = StrDict()
    np.testing.assert_array_equal(d.add(_col(strings)), [0, 1, 2, 3, 0, 1, 4, 5, 2])


def test_sorted_ranks_is_bytewise_order():
    rng = np.random.default_rng(1)
    strings = list(dict.fromkeys(_random_strings(rng, 5000, 5000)))
    uniq, rank = sorted_ranks(_col(strings))
    order = sorted(strings)
    assert [uniq.value(i) for i in range(len(uniq))] == order
    np.testing.assert_array_equal(rank, [order.index(s) for s in strings])


def test_int_entries_are_first_seen_order_with_extreme_values():
    from lrgi_ooc.store.iddict import IntDict, sorted_int_ranks
    rng = np.random.default_rng(2)
    pool = np.unique(np.concatenate([
        rng.integers(-2**63, 2**63 - 1, 90_000, dtype=np.int64),
        np.array([0, -1, 1, -2**63, 2**63 - 1, 2**63 - 2], np.int64)]))
    q = pool[rng.integers(0, len(pool), 250_000)]
    d = IntDict(capacity=16)
    got = np.concatenate([d.add(q[a:a + 60_000]) for a in range(0, len(q), 60_000)])
    ref: dict[int, int] = {}
    np.testing.assert_array_equal(got, [ref.setdefault(int(x), len(ref)) for x in q])
    np.testing.assert_array_equal(d.ids(), list(ref))
    keys, rank = sorted_int_ranks(d.ids())
    np.testing.assert_array_equal(keys, np.unique(q))
    np.testing.assert_array_equal(keys[rank], d.ids())


def test_growth_past_the_limit_raises_before_allocating():
    import pytest

    from lrgi_ooc.store.iddict import IntDict
    d = IntDict(capacity=16, limit=1 << 16)
    with pytest.raises(OverflowError):
        d.add(np.arange(100_000, dtype=np.int64))
    assert d.slots.nbytes <= 1 << 16
    s = StrDict(capacity=16, limit=1 << 16)
    with pytest.raises(OverflowError):
        s.add(_col([b"%d" % i for i in range(100_000)]))
    assert s.slots.nbytes + len(s.ar) <= 1 << 17
