"""The secure-aggregation frame codec: round trips, and nothing but DecodeError on junk."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemesh.errors import DecodeError, EncodeError, SizeLimitExceeded
from securemesh.fl._messages import (
    Abort,
    AdvertiseKeys,
    ConsistencySig,
    ForwardedShares,
    MaskedInput,
    RoundKeys,
    ShareKeys,
    SurvivorSet,
    SurvivorSigs,
    UnmaskShare,
    UnmaskShares,
    decode,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True)
rid = st.binary(min_size=16, max_size=16)


def b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


adv = st.builds(AdvertiseKeys, rid, ids, b(32), b(32), b(64))
messages = st.one_of(
    adv,
    st.builds(
        lambda r, keys: RoundKeys(r, tuple(replace(k, round_id=r) for k in keys)),
        rid,
        st.lists(adv, max_size=3),
    ),
    st.builds(
        lambda r, c, cts: ShareKeys(r, c, tuple(cts)),
        rid,
        ids,
        st.lists(st.tuples(ids, st.binary(max_size=300)), max_size=3),
    ),
    st.builds(
        lambda r, cts: ForwardedShares(r, tuple(cts)),
        rid,
        st.lists(st.tuples(ids, st.binary(max_size=300)), max_size=3),
    ),
    st.builds(
        lambda r, c, v, comp: MaskedInput(r, c, v, tuple(comp)),
        rid,
        ids,
        st.binary(max_size=64),
        st.lists(st.tuples(ids, st.text(max_size=20)), max_size=2),
    ),
    st.builds(lambda r, s: SurvivorSet(r, tuple(s)), rid, st.lists(ids, max_size=4)),
    st.builds(ConsistencySig, rid, ids, b(64)),
    st.builds(
        lambda r, s: SurvivorSigs(r, tuple(s)), rid, st.lists(st.tuples(ids, b(64)), max_size=3)
    ),
    st.builds(
        lambda r, c, s: UnmaskShares(r, c, tuple(s)),
        rid,
        ids,
        st.lists(
            st.builds(UnmaskShare, ids, st.sampled_from([0, 1]), b(69), b(32), b(64)), max_size=3
        ),
    ),
    st.builds(Abort, rid, st.text(max_size=50)),
)


@given(messages)
def test_round_trip(msg: object) -> None:
    frame = msg.encode()  # type: ignore[attr-defined]
    assert decode(frame) == msg
    with pytest.raises(DecodeError):
        decode(frame + b"\x00")
    if len(frame) > 23:
        with pytest.raises(DecodeError):
            decode(frame[:-1])


@given(st.binary(max_size=300))
def test_junk_raises_only_decode_error(junk: bytes) -> None:
    for frame in (junk, b"SMFL\x01" + junk, b"SMFL\x01\x05" + junk):
        with contextlib.suppress(DecodeError):
            decode(frame)


def test_limits() -> None:
    with pytest.raises(SizeLimitExceeded):
        decode(b"x" * 100, max_size=99)
    big = ShareKeys(bytes(16), "a", (("b", bytes(600)),)).encode()
    with pytest.raises(SizeLimitExceeded):
        decode(big)
    with pytest.raises(EncodeError):
        AdvertiseKeys(bytes(16), "bad id!", bytes(32), bytes(32), bytes(64)).encode()
    with pytest.raises(DecodeError, match="client id"):
        decode(
            AdvertiseKeys(bytes(16), "ok", bytes(32), bytes(32), bytes(64))
            .encode()
            .replace(b"\x00\x02ok", b"\x00\x02o!")
        )
