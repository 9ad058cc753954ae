"""ReplayWindow.accept's in-order fast path decides exactly like check() + a reference model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.errors import LocalError, ReplayedMessage, StaleMessage
from securemesh.wire import ReplayWindow

_U64_MAX = 2**64 - 1


def _reference(seqs: list[int], floor: int | None, window: int) -> list[str]:
    accepted: set[int] = set()
    top = -1 if floor is None else floor
    low = -1 if floor is None else floor
    out = []
    for s in seqs:
        if not 0 <= s <= _U64_MAX:
            out.append("local")
        elif s > top:
            accepted.add(s)
            top = s
            out.append("ok")
        elif s <= low or top - s >= window:
            out.append("stale")
        elif s in accepted:
            out.append("replayed")
        else:
            accepted.add(s)
            out.append("ok")
    return out


@settings(max_examples=200, deadline=None)
@given(
    base=st.sampled_from([0, 1000, _U64_MAX - 300]),
    steps=st.lists(st.integers(min_value=-250, max_value=250), max_size=60),
    floor=st.one_of(st.none(), st.integers(min_value=0, max_value=50)),
)
def test_accept_matches_reference(base: int, steps: list[int], floor: int | None) -> None:
    window = ReplayWindow(blocks=3, floor=floor)  # a window of 128: steps cross it
    seqs = [base + d for d in steps] + [-1, _U64_MAX + 1]
    got = []
    for s in seqs:
        try:
            window.accept(s)
            got.append("ok")
        except StaleMessage:
            got.append("stale")
        except ReplayedMessage:
            got.append("replayed")
        except LocalError:
            got.append("local")
    assert got == _reference(seqs, floor, window.window_size)


def test_accept_refuses_non_int_and_bool() -> None:
    window = ReplayWindow()
    for bad in (True, 1.0, "1"):
        try:
            window.accept(bad)  # type: ignore[arg-type]
        except LocalError:
            continue
        raise AssertionError(f"{bad!r} accepted")
