"""The id dictionaries of the in-memory remap against a Python dict and np.unique."""
import numpy as np
import pyarrow as pa
import pytest

from lrgi_ooc.store.idcols import StrCol
from lrgi_ooc.store.iddict import (IntDict, StrDict, _same, entry_ranks, gather,
                                   sorted_int_ranks, sorted_ranks)


def _col(strings):
    return StrCol.from_arrow(pa.array(strings, pa.binary()))


def _random_strings(rng, n, distinct):
    pool = [b"u" * int(rng.integers(0, 4)) + rng.bytes(int(rng.integers(1, 40)))
            for _ in range(distinct)]
    pool = list(dict.fromkeys(pool))
    return [pool[i] for i in rng.integers(0, len(pool), n)]


def _dense(d, got, sort):
    """Dense ids of every query through the dictionary's entries (what the remap writes)."""
    distinct, entries = d.distinct()
    _, rank = sort(distinct)
    return gather(entry_ranks(d.span, entries, rank), got)


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_string_entries_and_dense_ids_across_blocks_and_growth(shards):
    rng = np.random.default_rng(0)
    strings = _random_strings(rng, 300_000, 120_000)   # grows the table several times
    d = StrDict(capacity=16, shards=shards)
    got = np.concatenate([d.add(_col(strings[a:a + 70_000]))
                          for a in range(0, len(strings), 70_000)])
    assert got.dtype == np.int32
    ref: dict[bytes, int] = {}
    first = np.array([ref.setdefault(s, len(ref)) for s in strings])
    assert len(d) == len(ref)
    if shards == 1:                                     # one shard: first-seen order
        np.testing.assert_array_equal(got, first)
    distinct, entries = d.distinct()
    by_entry = dict(zip(entries.tolist(), (distinct.value(i) for i in range(len(distinct)))))
    assert sorted(by_entry.values()) == sorted(ref)     # each string once
    assert [by_entry[e] for e in got[:2000].tolist()] == strings[:2000]
    order = sorted(ref)
    pos = {s: i for i, s in enumerate(order)}
    np.testing.assert_array_equal(_dense(d, got, sorted_ranks), [pos[s] for s in strings])


def test_prefixes_and_equal_lengths_are_told_apart():
    strings = [b"ab", b"abc", b"a", b"abd", b"ab", b"abc", b"b", b"a\x00", b"a"]
    d = StrDict(shards=1)
    np.testing.assert_array_equal(d.add(_col(strings)), [0, 1, 2, 3, 0, 1, 4, 5, 2])
    d = StrDict(shards=2)
    got = d.add(_col(strings))
    np.testing.assert_array_equal(_dense(d, got, sorted_ranks),
                                  [sorted(set(strings)).index(s) for s in strings])


def test_byte_comparison_sees_a_difference_at_every_position_of_every_length():
    """The dictionary confirms a hash match by `_same` (words, the last one overlapping):
    equal-length strings that differ in one byte anywhere, at any offsets, are unequal.
    Hash tags almost never collide, so the dictionary's own tests rarely reach it."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, 100, dtype=np.uint8)
    for ln in range(41):
        for p, q in ((0, 0), (3, 50), (11, 7)):
            b = a.copy()
            b[q:q + ln] = a[p:p + ln]
            assert _same(a, p, b, q, ln)
            for k in range(ln):
                c = b.copy()
                c[q + k] ^= 1 << (k % 8)
                assert not _same(a, p, c, q, ln), (ln, p, q, k)


def test_sorted_ranks_is_bytewise_order():
    rng = np.random.default_rng(1)
    strings = list(dict.fromkeys(_random_strings(rng, 5000, 5000)))
    uniq, rank = sorted_ranks(_col(strings))
    order = sorted(strings)
    assert [uniq.value(i) for i in range(len(uniq))] == order
    np.testing.assert_array_equal(rank, [order.index(s) for s in strings])


@pytest.mark.parametrize("shards", [1, 2, 8])
def test_int_entries_and_dense_ids_with_extreme_values(shards):
    rng = np.random.default_rng(2)
    pool = np.unique(np.concatenate([
        rng.integers(-2**63, 2**63 - 1, 90_000, dtype=np.int64),
        np.array([0, -1, 1, -2**63, 2**63 - 1, 2**63 - 2], np.int64)]))
    q = pool[rng.integers(0, len(pool), 250_000)]
    d = IntDict(capacity=16, shards=shards)
    got = np.concatenate([d.add(q[a:a + 60_000]) for a in range(0, len(q), 60_000)])
    ref: dict[int, int] = {}
    first = [ref.setdefault(int(x), len(ref)) for x in q]
    if shards == 1:
        np.testing.assert_array_equal(got, first)
    distinct, entries = d.distinct()
    np.testing.assert_array_equal(np.sort(distinct), np.unique(q))
    assert len(set(entries.tolist())) == len(entries) and entries.max() < d.span
    table = np.full(d.span, 0, np.int64)
    table[entries] = distinct
    np.testing.assert_array_equal(table[got], q)                  # entries give the ids back
    keys, rank = sorted_int_ranks(distinct)
    np.testing.assert_array_equal(keys, np.unique(q))
    np.testing.assert_array_equal(_dense(d, got, sorted_int_ranks), np.searchsorted(keys, q))


def test_growth_past_the_limit_raises_before_allocating():
    d = IntDict(capacity=16, limit=1 << 16)
    with pytest.raises(OverflowError):
        d.add(np.arange(100_000, dtype=np.int64))
    assert d.slots.nbytes + d.keys.nbytes <= 1 << 16
    s = StrDict(capacity=16, limit=1 << 16)
    with pytest.raises(OverflowError):
        s.add(_col([b"%d" % i for i in range(100_000)]))
    assert s.slots.nbytes + int(s.m.sum()) <= 1 << 16


def test_bytewise_order_of_prefixes_zero_bytes_and_long_shared_prefixes():
    from lrgi_ooc.store.strsort import bytewise_order, take
    rng = np.random.default_rng(3)
    base = b"https://example.org/user/"               # 25 shared bytes: three words deep
    strings = {b"", b"\x00", b"\x00\x00", b"a", b"a\x00", b"a\x00\x00\x00\x00\x00\x00\x00\x00",
               b"abcdefgh", b"abcdefg", b"abcdefghi", b"abcdefgh\x00", b"\xff" * 9, b"\xff" * 8,
               base, base + b"\x00", base[:-1]}
    strings |= {base + rng.bytes(int(rng.integers(0, 12))) for _ in range(3000)}
    strings |= {rng.bytes(int(rng.integers(0, 20))) for _ in range(3000)}
    strings = list(strings)
    col = _col(strings)
    order = bytewise_order(col)
    assert [strings[i] for i in order] == sorted(strings)
    got = take(col, order)
    assert [got.value(i) for i in range(len(got))] == sorted(strings)


@pytest.mark.parametrize("n", [2, 3, 25, 26, 1000, 40_000])
@pytest.mark.parametrize("alphabet", [[0, 1], [0, 1, 2]])
def test_bytewise_order_with_a_prefix_every_string_shares(n, alphabet):
    """The key starts after the shared prefix (here "user-", and one string is just that)
    and codes each byte in 2 bits (3 codes with the end: every code's bits used); long
    strings of few letters tie on the key and are settled by insertion and by words."""
    from lrgi_ooc.store.strsort import _shared_prefix, bytewise_order
    rng = np.random.default_rng(n)
    strings = {b"user-"}
    while len(strings) < n:
        tail = rng.choice(alphabet, size=int(rng.integers(0, 40))).astype(np.uint8)
        strings.add(b"user-" + tail.tobytes())
    strings = list(strings)
    col = _col(strings)
    assert _shared_prefix(col.offsets, col.kernel_data) == 5
    order = bytewise_order(col)
    assert [strings[i] for i in order] == sorted(strings)


def test_a_huge_budget_reserves_no_more_arena_than_the_machine_can_map():
    import psutil

    from lrgi_ooc.store.iddict import _reserve
    total = psutil.virtual_memory().total
    assert _reserve(1 << 60, 2) == total // 4
    assert _reserve(1 << 20, 2) == 1 << 20
    assert _reserve(None, 2) == 0
    d = StrDict(limit=1 << 60)                   # must not raise MemoryError
    assert d.ar.shape[1] <= total // (2 * d.shards)
    np.testing.assert_array_equal(d.add(_col([b"x", b"y", b"x"])) >= 0, True)


@pytest.mark.parametrize("typ", [pa.string(), pa.binary(), pa.large_string(), pa.large_binary()])
def test_from_arrow_of_every_string_type_and_of_slices(typ):
    values = [b"", b"a", b"user-00ff", b"\x00\x01", b"https://example.org/" * 3] * 50
    arr = pa.array([v if "binary" in str(typ) else v.decode() for v in values], typ)
    for a, b in [(0, len(values)), (3, 9), (100, 250), (7, 7)]:
        col = StrCol.from_arrow(arr.slice(a, b - a))
        assert col.offsets.dtype == np.int64 and col.offsets[0] == 0
        assert [col.value(i) for i in range(len(col))] == values[a:b]
        if b - a < len(values) // 2:               # a small slice owns its bytes
            assert col.data.base is None
    chunked = pa.chunked_array([arr.slice(0, 5), arr.slice(5, 5)])
    col = StrCol.from_arrow(chunked)
    assert [col.value(i) for i in range(len(col))] == values[:10]
