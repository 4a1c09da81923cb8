"""``merge_columns`` lays sorted pending changes over runs of columns exactly as
``merge_pending`` lays them over the same entries one by one."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import example, given
from hypothesis import strategies as st

from persist.mux import merge_columns, merge_pending

_keys = st.binary(max_size=2)
_entries = st.dictionaries(_keys, st.binary(max_size=3), max_size=40)
_pending = st.dictionaries(_keys, st.none() | st.binary(max_size=3), max_size=40)


def _runs(entries: dict[bytes, bytes], cuts: list[int]) -> list[tuple[tuple[bytes, ...], ...]]:
    ordered = sorted(entries.items())
    bounds = sorted({0, len(ordered), *(c % (len(ordered) + 1) for c in cuts)})
    runs = [ordered[a:b] for a, b in pairwise(bounds) if b > a]
    return [(tuple(k for k, _ in run), tuple(v for _, v in run)) for run in runs]


@given(_entries, _pending, st.lists(st.integers(0, 60), max_size=12))
@example({b"a": b"1", b"c": b"3"}, {b"b": None, b"d": b"4"}, [1])  # between and after runs
@example({b"a": b"1"}, {b"a": None}, [])  # a run merged away entirely
def test_merge_columns_equals_merge_pending(
    entries: dict[bytes, bytes], pending: dict[bytes, bytes | None], cuts: list[int]
) -> None:
    runs = _runs(entries, cuts)
    changes = sorted(pending.items())
    flat = iter(sorted(entries.items()))
    want = list(merge_pending(flat, changes, False))
    got = list(merge_columns(iter(runs), changes))
    assert [(k, v) for keys, values in got for k, v in zip(keys, values, strict=True)] == want
    assert all(keys for keys, _ in got)  # no empty run
    assert [k for keys, _ in got for k in keys] == sorted(k for k, _ in want)
    prev_last = None
    for keys, _ in runs:  # a run no pending key reaches passes through, the same object
        last = keys[-1]
        if not any((prev_last is None or k > prev_last) and k <= last for k in pending):
            assert any(out is keys for out, _ in got)
        prev_last = last
