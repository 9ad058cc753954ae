"""TokenStore against a dictionary model: create, consume, revoke, prune, time passes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from securemesh.crypto import Tier
from securemesh.enroll._store import TokenStore
from securemesh.errors import TokenError

T0 = 1_800_000_000


class StoreModel(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.store = TokenStore(Path(self.dir.name) / "t.db")
        self.now = T0
        # token id -> [expires_at, used_by or None]
        self.model: dict[bytes, list[object]] = {}
        self.ids: list[bytes] = []

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            self.dir.cleanup()

    @rule(ttl=st.integers(1, 100))
    def create(self, ttl: int) -> None:
        token = self.store.create(
            authority_id="mesh",
            root_key=bytes(32),
            server_key=bytes(32),
            server_id="cloud-1",
            endpoint="tcp://127.0.0.1:1",
            issuer="mesh",
            tier="end",
            ttl_s=ttl,
            now=self.now,
        )
        self.model[token.token_id] = [self.now + ttl, None]
        self.ids.append(token.token_id)

    @rule(dt=st.integers(0, 60))
    def advance(self, dt: int) -> None:
        self.now += dt

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), node=st.sampled_from(["a", "b", "c"]))
    def consume(self, data: st.DataObject, node: str) -> None:
        tid = data.draw(st.sampled_from(self.ids))
        entry = self.model.get(tid)
        usable = entry is not None and entry[1] is None and self.now < entry[0]  # type: ignore[operator]
        # Node ids are bound to keys: "a" always uses the same key, so re-enrolling is allowed.
        try:
            self.store.consume(
                tid, node_id=node, verify_key=node.encode() * 32, tier=Tier.END, now=self.now
            )
        except TokenError:
            assert not usable
        else:
            assert usable
            assert entry is not None
            entry[1] = node

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(self.ids))
        entry = self.model.get(tid)
        usable = entry is not None and entry[1] is None and self.now < entry[0]  # type: ignore[operator]
        assert self.store.revoke(tid, now=self.now) == usable
        if usable:
            assert entry is not None
            entry[0] = self.now

    @rule()
    def prune(self) -> None:
        gone = [t for t, (exp, _) in self.model.items() if exp <= self.now]  # type: ignore[operator]
        assert self.store.prune_expired(now=self.now) == len(gone)
        for tid in gone:
            del self.model[tid]

    @invariant()
    def agrees(self) -> None:
        if not hasattr(self, "store"):
            return
        usable = {t for t, (exp, used) in self.model.items() if used is None and self.now < exp}  # type: ignore[operator]
        listed = self.store.list_tokens(include_used=False, include_expired=False, now=self.now)
        assert {r.token_id for r in listed} == usable
        assert len(self.store.list_tokens()) == len(self.model)


StoreModel.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_store_matches_model = StoreModel.TestCase
