"""Secure aggregation: sans-I/O client and server state machines.

Theory of operation
-------------------
This is the double-masking protocol of Bonawitz et al., "Practical Secure
Aggregation for Privacy-Preserving Machine Learning" (CCS 2017, Fig. 4,
honest-but-curious server plus the consistency check of the active variant),
run over the sparse neighbour graph of Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead" (CCS 2020, "SecAgg+"); see
:mod:`securemesh.fl._config` for the graph. Bytes go in, bytes come out; no
socket, clock or thread is touched here: the caller passes ``now`` and moves
the frames (the in-memory bench, the tests, or the FL service on the bus).

Stages (U1 ⊇ U2 ⊇ U3 ⊇ U4 ⊇ U5 are the clients still in at each stage):

0. **AdvertiseKeys.** Each client draws two X25519 key pairs, (c_sk, c_pk)
   for encrypting shares and (s_sk, s_pk) for pairwise masks, and signs
   ``round_id || id || c_pk || s_pk`` with its identity key (Ed25519). The
   server checks the signature (a bad one: the client is excluded and
   audited), U1 = the valid advertisers, and sends each client its
   neighbours' advertisements; the client checks every signature again.
1. **ShareKeys.** Each client draws a 32-byte self-mask seed b_u and
   Shamir-shares b_u and s_sk_u t-of-(k+1) among its holders (its neighbours
   and itself; :mod:`securemesh.crypto.shamir`). The pair of shares for holder
   v is signed by u's identity key (over the SHA-256 of each share, so the
   server can later check one share alone) and sealed with XChaCha20-Poly1305
   under HKDF(X25519(c_sk_u, c_pk_v)) bound to the round and the ordered pair
   (sender, holder) as associated data. The server forwards ciphertexts
   (it cannot read them); U2 = the clients whose ShareKeys was complete.
2. **MaskedInput.** Each client opens its shares; a share that does not
   open, is malformed, has the wrong x or is wrongly signed is *complained
   about* (and its sender gets no pairwise mask from this client). Then
   ``y_u = x_u + PRG(b_u) + sum_{v} ±PRG(s_uv)  (mod 2^bits)`` where v runs
   over the neighbours whose shares it accepted, s_uv =
   HKDF(X25519(s_sk_u, s_pk_v)) bound to the round and the unordered pair,
   ``+`` if u < v and ``-`` otherwise, and PRG is ChaCha20 over the full seed
   (:mod:`securemesh.crypto.prg`). U3 = senders minus the accused: accused
   clients are excluded (their y is discarded) and the exclusion audited.
3. **ConsistencyCheck.** The server sends U3; every client signs
   ``round_id || U3``; U4 = the signers. The server forwards each client its
   neighbours' signatures; a client that sees a bad signature or fewer than
   t signers among its holders aborts (it was shown a different U3).
4. **Unmasking.** For each neighbour v whose share it holds (and itself),
   a client reveals the share of b_v if v ∈ U3 and the share of s_sk_v if v
   is in U2 but not U3 -- never both for one v. The server checks each
   share's signature, rebuilds every b_v (v ∈ U3) and every dropped s_sk_v
   from t shares (checking s_sk_v against the advertised s_pk_v), and
   computes ``sum_{u in U3} y_u - PRG(b_u) - (the dropped clients' pairwise
   masks)`` = ``sum_{u in U3} x_u (mod 2^bits)``.

Every server stage has a deadline (``stage_timeout``): the stage ends when
every expected client answered or the deadline passed; then it aborts with a
stated reason if fewer than t clients remain or any needed secret has fewer
than t valid shares. A client aborts if the server stays silent past the
deadline, or sends anything inconsistent.

Privacy, informally (the papers prove it): a client's y_u is uniformly
random to anyone without b_u, and b_u is rebuilt only for u ∈ U3 while
s_sk_u is rebuilt only for u ∉ U3; the honest clients' threshold being a
strict majority of every holder set, an honest-but-curious server, even with
fewer than t colluding holders, learns nothing but the sum over U3.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric import x25519

from securemesh.crypto import Signer, verify_signature
from securemesh.crypto.aead import open_sealed, seal
from securemesh.crypto.kx import hkdf_sha256
from securemesh.crypto.prg import expand_mask
from securemesh.crypto.shamir import SHARE_SIZE, Share, combine, split
from securemesh.errors import AuthenticationError, DecodeError, LocalError, RemoteError
from securemesh.fl._config import SecAggConfig
from securemesh.fl._messages import (
    Abort,
    AdvertiseKeys,
    ConsistencySig,
    ForwardedShares,
    MaskedInput,
    Message,
    RoundKeys,
    ShareKeys,
    SurvivorSet,
    SurvivorSigs,
    UnmaskShare,
    UnmaskShares,
    decode,
)

__all__ = [
    "ClientState",
    "Exclusion",
    "RoundAborted",
    "SecAggClient",
    "SecAggServer",
    "ServerState",
]

_ADV = b"securemesh/fl/secagg/v1/advertise\x00"
_SHARE = b"securemesh/fl/secagg/v1/share\x00"
_SURV = b"securemesh/fl/secagg/v1/survivors\x00"
_ENC = b"securemesh/fl/secagg/v1/enc\x00"
_PAIR = b"securemesh/fl/secagg/v1/pair\x00"
_AAD = b"securemesh/fl/secagg/v1/aad\x00"
_SEED = 32
_PLAIN = 2 * SHARE_SIZE + 64
SELF_LABEL = b"self"
PAIR_LABEL = b"pair"

RandBytes = Callable[[int], bytes]
Vector = npt.NDArray[np.unsignedinteger]


class RoundAborted(LocalError):
    """The round ended without a result; ``str(exc)`` says why."""


def _lp(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _adv_data(round_id: bytes, client: str, c_pk: bytes, s_pk: bytes) -> bytes:
    return _ADV + round_id + _lp(client) + c_pk + s_pk


def _share_data(round_id: bytes, owner: str, holder: str, hb: bytes, hs: bytes) -> bytes:
    return _SHARE + round_id + _lp(owner) + _lp(holder) + hb + hs


def _survivor_data(round_id: bytes, survivors: tuple[str, ...]) -> bytes:
    return _SURV + round_id + struct.pack(">I", len(survivors)) + b"".join(map(_lp, survivors))


def _pair_info(domain: bytes, round_id: bytes, a: str, b: str) -> bytes:
    lo, hi = (a, b) if a < b else (b, a)
    return domain + round_id + _lp(lo) + _lp(hi)


def _aad(round_id: bytes, sender: str, holder: str) -> bytes:
    return _AAD + round_id + _lp(sender) + _lp(holder)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class _Agreement:
    """An X25519 private key kept parsed, for many agreements (RFC 7748, then HKDF).

    The same recipe as :func:`securemesh.crypto.kx.derive_shared_key` (which
    is the reference for it: the tests check both agree), without parsing the
    private key again for every peer -- that parse costs as much as the
    agreement itself, and a SecAgg+ client makes 2k agreements per round.
    """

    __slots__ = ("_key",)

    def __init__(self, private: bytes) -> None:
        if len(private) != 32:
            raise LocalError("an X25519 private key is 32 bytes")
        self._key = x25519.X25519PrivateKey.from_private_bytes(bytes(private))

    def public(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def derive(self, peer_public: bytes, info: bytes) -> bytes:
        if len(peer_public) != 32:
            raise DecodeError("an X25519 public key is 32 bytes")
        try:
            shared = self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:
            raise AuthenticationError("low-order X25519 public key") from exc
        if hmac.compare_digest(shared, bytes(32)):
            raise AuthenticationError("low-order X25519 public key")
        return hkdf_sha256(shared, info=info)


def pair_seed(
    config: SecAggConfig, s_key: _Agreement, peer_s_pk: bytes, me: str, peer: str
) -> bytes:
    """The 32-byte pairwise mask seed s_{me,peer} (symmetric in the pair)."""
    return s_key.derive(peer_s_pk, _pair_info(_PAIR, config.round_id, me, peer))


def _apply_pair(acc: Vector, config: SecAggConfig, seed: bytes, me: str, peer: str) -> None:
    mask = expand_mask(seed, config.length, bits=config.bits, label=PAIR_LABEL)
    if me < peer:
        acc += mask
    else:
        acc -= mask


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A client the server excluded, and why (the caller audits it)."""

    client: str
    stage: str
    reason: str
    accuser: str | None = None


class ClientState(enum.Enum):
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    SIGNED = "signed"
    DONE = "done"
    ABORTED = "aborted"


class SecAggClient:
    """One client's side of one round. Frames in, frames out.

    ``start()`` returns the AdvertiseKeys frame; each ``receive(frame, now)``
    returns the next frame for the server (or None); ``tick(now)`` aborts the
    round after ``stage_timeout`` seconds without progress. ``vector`` is the
    client's quantized input, ``config.length`` elements of the ring
    (``config.dtype``); it can also be given later with :meth:`set_input`,
    any time before the server forwards the shares.
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_id: str,
        signer: Signer,
        verify_keys: Mapping[str, bytes],
        *,
        vector: Vector | None = None,
        now: float = 0.0,
        randbytes: RandBytes = os.urandom,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        if client_id not in config.cohort:
            raise LocalError("client is not in the round's cohort")
        self.config = config
        self.id = client_id
        self._signer = signer
        self._vk = verify_keys
        self._rand = randbytes
        self._randbelow = randbelow
        self._vector: Vector | None = None
        if vector is not None:
            self.set_input(vector)
        self.state = ClientState.ADVERTISED
        self.abort_reason: str | None = None
        self._deadline = now + config.stage_timeout
        self._c_key = _Agreement(self._rand(32))
        self._s_sk = self._rand(32)
        self._s_key = _Agreement(self._s_sk)
        self._enc_keys: dict[str, bytes] = {}
        self._peers: dict[str, AdvertiseKeys] = {}
        self._held: dict[str, tuple[bytes, bytes, bytes]] = {}  # owner -> (b, s, sig)
        self._masked_with: set[str] = set()
        self._survivors: tuple[str, ...] = ()
        self.bytes_sent = 0

    def set_input(self, vector: Vector) -> None:
        arr = np.asarray(vector)
        if arr.shape != (self.config.length,) or arr.dtype != np.dtype(self.config.dtype):
            raise LocalError(f"input must be {self.config.length} x {self.config.dtype}")
        if self.config.bits < arr.dtype.itemsize * 8 and int(arr.max(initial=0)) > self.config.mask:
            raise LocalError(f"input elements must be below 2**{self.config.bits}")
        self._vector = arr

    def _out(self, msg: Message) -> bytes:
        frame = msg.encode()
        self.bytes_sent += len(frame)
        return frame

    def _abort(self, reason: str) -> None:
        if self.state not in (ClientState.DONE, ClientState.ABORTED):
            self.state = ClientState.ABORTED
            self.abort_reason = reason

    def start(self) -> bytes:
        c_pk, s_pk = self._c_key.public(), self._s_key.public()
        rid = self.config.round_id
        sig = self._signer.sign(_adv_data(rid, self.id, c_pk, s_pk))
        return self._out(AdvertiseKeys(rid, self.id, c_pk, s_pk, sig))

    def tick(self, now: float) -> None:
        if now > self._deadline and self.state not in (ClientState.DONE, ClientState.ABORTED):
            self._abort(f"timed out waiting for the server after stage {self.state.value}")

    def receive(self, frame: bytes, now: float) -> bytes | None:
        """Process one server frame; the reply frame, or None (then check ``state``)."""
        if self.state in (ClientState.DONE, ClientState.ABORTED):
            return None
        try:
            msg = decode(frame)
            if msg.round_id != self.config.round_id:
                raise DecodeError("frame of another round")
            reply = self._step(msg)
        except (RemoteError, RoundAborted) as exc:
            self._abort(f"{type(exc).__name__}: {exc}")
            return None
        self._deadline = now + self.config.stage_timeout
        return reply

    def _step(self, msg: Message) -> bytes | None:
        if isinstance(msg, Abort):
            raise RoundAborted(f"server aborted the round: {msg.reason}")
        if self.state is ClientState.ADVERTISED and isinstance(msg, RoundKeys):
            return self._share_keys(msg)
        if self.state is ClientState.SHARED and isinstance(msg, ForwardedShares):
            return self._masked_input(msg)
        if self.state is ClientState.MASKED and isinstance(msg, SurvivorSet):
            return self._consistency(msg)
        if self.state is ClientState.SIGNED and isinstance(msg, SurvivorSigs):
            return self._unmask(msg)
        raise DecodeError(f"unexpected {type(msg).__name__} in state {self.state.value}")

    # -- round 1
    def _share_keys(self, msg: RoundKeys) -> bytes:
        cfg, rid = self.config, self.config.round_id
        neighbours = set(cfg.neighbours(self.id))
        for adv in msg.keys:
            if adv.client not in neighbours or adv.client in self._peers:
                raise DecodeError("round keys name a non-neighbour or a client twice")
            verify_signature(
                self._vk[adv.client], _adv_data(rid, adv.client, adv.c_pk, adv.s_pk), adv.signature
            )
            self._peers[adv.client] = adv
        if len(self._peers) + 1 < cfg.t:
            raise RoundAborted(f"only {len(self._peers) + 1} of my holders are in, need {cfg.t}")
        b = self._rand(_SEED)
        self._b = b
        holders = cfg.holders(self.id)
        b_shares = split(b, threshold=cfg.t, shares=len(holders), randbelow=self._randbelow)
        s_shares = split(
            self._s_sk, threshold=cfg.t, shares=len(holders), randbelow=self._randbelow
        )
        cts: list[tuple[str, bytes]] = []
        for i, holder in enumerate(holders):
            bs, ss = b_shares[i].to_bytes(), s_shares[i].to_bytes()
            sig = self._signer.sign(_share_data(rid, self.id, holder, _sha(bs), _sha(ss)))
            if holder == self.id:
                self._held[self.id] = (bs, ss, sig)
                continue
            peer = self._peers.get(holder)
            if peer is None:
                continue
            key = self._enc_key(holder)
            cts.append((holder, seal(key, bs + ss + sig, aad=_aad(rid, self.id, holder))))
        self.state = ClientState.SHARED
        return self._out(ShareKeys(rid, self.id, tuple(cts)))

    def _enc_key(self, peer: str) -> bytes:
        key = self._enc_keys.get(peer)
        if key is None:
            info = _pair_info(_ENC, self.config.round_id, self.id, peer)
            key = self._enc_keys[peer] = self._c_key.derive(self._peers[peer].c_pk, info)
        return key

    def _open_share(self, sender: str, ct: bytes) -> tuple[bytes, bytes, bytes]:
        rid = self.config.round_id
        plain = open_sealed(self._enc_key(sender), ct, aad=_aad(rid, sender, self.id))
        if len(plain) != _PLAIN:
            raise DecodeError("share plaintext has the wrong size")
        bs, ss, sig = plain[:SHARE_SIZE], plain[SHARE_SIZE : 2 * SHARE_SIZE], plain[-64:]
        x = self.config.share_x(sender, self.id)
        if Share.from_bytes(bs).x != x or Share.from_bytes(ss).x != x:
            raise DecodeError("share has the wrong x coordinate")
        verify_signature(
            self._vk[sender], _share_data(rid, sender, self.id, _sha(bs), _sha(ss)), sig
        )
        return bs, ss, sig

    # -- round 2
    def _masked_input(self, msg: ForwardedShares) -> bytes:
        cfg = self.config
        if self._vector is None:
            raise RoundAborted("no input was given before the masked-input stage")
        complaints: list[tuple[str, str]] = []
        seen: set[str] = set()
        for sender, ct in msg.ciphertexts:
            if sender not in self._peers or sender in seen:
                raise DecodeError("forwarded share from a non-neighbour or twice")
            seen.add(sender)
            try:
                self._held[sender] = self._open_share(sender, ct)
            except (RemoteError, LocalError) as exc:
                complaints.append((sender, f"{type(exc).__name__}: {exc}"))
                continue
            self._masked_with.add(sender)
        acc = self._vector.astype(cfg.dtype, copy=True)
        acc += expand_mask(self._b, cfg.length, bits=cfg.bits, label=SELF_LABEL)
        for peer in sorted(self._masked_with):
            seed = pair_seed(cfg, self._s_key, self._peers[peer].s_pk, self.id, peer)
            _apply_pair(acc, cfg, seed, self.id, peer)
        if cfg.bits < acc.dtype.itemsize * 8:
            acc &= acc.dtype.type(cfg.mask)
        self.state = ClientState.MASKED
        vec = acc.astype(acc.dtype.newbyteorder("<"), copy=False).tobytes()
        return self._out(MaskedInput(cfg.round_id, self.id, vec, tuple(complaints)))

    # -- round 3
    def _consistency(self, msg: SurvivorSet) -> bytes:
        cfg = self.config
        u3 = msg.survivors
        if list(u3) != sorted(set(u3)) or not set(u3) <= set(cfg.cohort):
            raise DecodeError("survivor set is not a sorted subset of the cohort")
        if self.id not in u3:
            raise RoundAborted("the server left this client out of the survivor set")
        if len(u3) < cfg.t:
            raise RoundAborted(f"only {len(u3)} survivors, threshold {cfg.t}")
        self._survivors = u3
        sig = self._signer.sign(_survivor_data(cfg.round_id, u3))
        self.state = ClientState.SIGNED
        return self._out(ConsistencySig(cfg.round_id, self.id, sig))

    # -- round 4
    def _unmask(self, msg: SurvivorSigs) -> bytes:
        cfg, rid = self.config, self.config.round_id
        u3 = set(self._survivors)
        data = _survivor_data(rid, self._survivors)
        holders = set(cfg.holders(self.id))
        signers = {self.id}
        for client, sig in msg.signatures:
            if client not in holders or client not in u3 or client in signers:
                raise DecodeError("survivor signature from outside my holders or twice")
            verify_signature(self._vk[client], data, sig)
            signers.add(client)
        if len(signers) < cfg.t:
            raise RoundAborted(f"only {len(signers)} of my holders confirmed U3, need {cfg.t}")
        out: list[UnmaskShare] = []
        for owner, (bs, ss, sig) in sorted(self._held.items()):
            if owner in u3:
                out.append(UnmaskShare(owner, 0, bs, _sha(ss), sig))
            elif owner in self._masked_with or owner == self.id:
                out.append(UnmaskShare(owner, 1, ss, _sha(bs), sig))
        self.state = ClientState.DONE
        return self._out(UnmaskShares(rid, self.id, tuple(out)))


class ServerState(enum.Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_NEXT_STATE = {
    ServerState.ADVERTISE: ServerState.SHARE,
    ServerState.SHARE: ServerState.MASKED,
    ServerState.MASKED: ServerState.CONSISTENCY,
    ServerState.CONSISTENCY: ServerState.UNMASK,
}


@dataclass
class _Stage:
    expected: frozenset[str]
    got: dict[str, Message] = field(default_factory=dict)


class SecAggServer:
    """The server's side of one round.

    ``receive(sender, frame, now)`` takes a frame from ``sender`` (the
    authenticated sender of the envelope it came in); ``tick(now)`` ends a
    stage at its deadline. Frames to send accumulate in :meth:`take_outbox`
    as ``(client, frame)``; exclusions (bad signatures, bad shares, malformed
    frames) in :meth:`take_exclusions`, for the caller to audit. When
    ``state`` is DONE, ``result`` is the sum of the survivors' inputs mod
    2**bits and ``survivors`` is U3; when ABORTED, ``abort_reason`` says why.
    """

    def __init__(
        self, config: SecAggConfig, verify_keys: Mapping[str, bytes], *, now: float = 0.0
    ) -> None:
        missing = set(config.cohort) - set(verify_keys)
        if missing:
            raise LocalError(f"no verify key for {sorted(missing)[:3]}")
        self.config = config
        self._vk = verify_keys
        self.state = ServerState.ADVERTISE
        self.abort_reason: str | None = None
        self.result: Vector | None = None
        self.survivors: tuple[str, ...] = ()
        self._stage = _Stage(frozenset(config.cohort))
        self._deadline = now + config.stage_timeout
        self._outbox: list[tuple[str, bytes]] = []
        self._exclusions: list[Exclusion] = []
        self._excluded: set[str] = set()
        self._gone: set[str] = set()
        self._adv: dict[str, AdvertiseKeys] = {}
        self._u2: frozenset[str] = frozenset()
        self._forwarded: dict[str, set[str]] = {}
        self._masked: dict[str, MaskedInput] = {}
        self._sigs: dict[str, bytes] = {}
        self._survivor_blob = b""
        self.stage_counts: dict[str, int] = {}

    # -- plumbing
    def take_outbox(self) -> list[tuple[str, bytes]]:
        out, self._outbox = self._outbox, []
        return out

    def take_exclusions(self) -> list[Exclusion]:
        out, self._exclusions = self._exclusions, []
        return out

    @property
    def finished(self) -> bool:
        return self.state in (ServerState.DONE, ServerState.ABORTED)

    def _exclude(self, client: str, reason: str, accuser: str | None = None) -> None:
        self._excluded.add(client)
        self._stage.got.pop(client, None)
        self._exclusions.append(Exclusion(client, self.state.value, reason, accuser))

    def _send(self, client: str, msg: Message) -> None:
        self._outbox.append((client, msg.encode()))

    def _abort(self, reason: str) -> None:
        self.state = ServerState.ABORTED
        self.abort_reason = reason
        frame = Abort(self.config.round_id, reason).encode()
        for client in self.config.cohort:
            if client not in self._excluded:
                self._outbox.append((client, frame))

    def tick(self, now: float) -> None:
        if not self.finished and now >= self._deadline:
            self._advance(now)

    def receive(self, sender: str, frame: bytes, now: float) -> bool:
        """Take one client frame; False if it was ignored (the caller counts those).

        A frame from outside the stage's expected clients (not in the cohort,
        excluded, gone, or after the round) is ignored; any other frame is
        taken, and a malformed one excludes its sender (``take_exclusions``).
        """
        if (
            self.finished
            or sender not in self._stage.expected
            or sender in self._excluded
            or sender in self._gone
        ):
            return False  # late, unknown or excluded: nothing to do
        if sender in self._stage.got:
            self._exclude(sender, "second message in one stage")
        else:
            try:
                msg = decode(frame)
                if msg.round_id != self.config.round_id:
                    raise DecodeError("frame of another round")
                if getattr(msg, "client", None) != sender:
                    raise DecodeError("message names another client than its sender")
                self._accept(sender, msg)
            except RemoteError as exc:
                self._exclude(sender, f"{type(exc).__name__}: {exc}")
        self._maybe_advance(now)
        return True

    def forget(self, client: str, now: float) -> None:
        """``client`` is unreachable (the transport says so): stop waiting for it this round.

        It is treated exactly like a client that misses the stage deadline, only
        sooner; nothing it sent before is discarded.
        """
        if not self.finished and client in self.config.cohort:
            self._gone.add(client)
            self._maybe_advance(now)

    def _maybe_advance(self, now: float) -> None:
        if set(self._stage.got) >= self._stage.expected - self._excluded - self._gone:
            self._advance(now)

    def _accept(self, sender: str, msg: Message) -> None:
        cfg, rid = self.config, self.config.round_id
        st = self.state
        if st is ServerState.ADVERTISE and isinstance(msg, AdvertiseKeys):
            verify_signature(
                self._vk[sender], _adv_data(rid, sender, msg.c_pk, msg.s_pk), msg.signature
            )
        elif st is ServerState.SHARE and isinstance(msg, ShareKeys):
            want = {v for v in cfg.neighbours(sender) if v in self._adv}
            got = [h for h, _ in msg.ciphertexts]
            if len(got) != len(set(got)) or set(got) != want:
                raise DecodeError("ShareKeys does not address exactly the holders that are in")
        elif st is ServerState.MASKED and isinstance(msg, MaskedInput):
            size = np.dtype(cfg.dtype).itemsize * cfg.length
            if len(msg.vector) != size:
                raise DecodeError(f"masked input is not {size} bytes")
            if cfg.bits < np.dtype(cfg.dtype).itemsize * 8:
                wire = np.dtype(cfg.dtype).newbyteorder("<")
                if int(np.frombuffer(msg.vector, dtype=wire).max(initial=0)) > cfg.mask:
                    # harmless to the sum (it is taken mod 2^bits) but not a valid
                    # element of the ring: a malformed client, refused like one
                    raise DecodeError(f"masked input holds values outside Z_2^{cfg.bits}")
            for accused, _ in msg.complaints:
                if accused not in self._forwarded.get(sender, ()):
                    raise DecodeError("complaint about a client whose share was not forwarded")
        elif st is ServerState.CONSISTENCY and isinstance(msg, ConsistencySig):
            verify_signature(self._vk[sender], self._survivor_blob, msg.signature)
        elif st is ServerState.UNMASK and isinstance(msg, UnmaskShares):
            self._check_unmask(sender, msg)
        else:
            raise DecodeError(f"unexpected {type(msg).__name__} in stage {st.value}")
        self._stage.got[sender] = msg

    def _check_unmask(self, sender: str, msg: UnmaskShares) -> None:
        cfg, _rid = self.config, self.config.round_id
        u3 = set(self.survivors)
        owners: set[str] = set()
        for s in msg.shares:
            if s.owner in owners or sender not in cfg.holders(s.owner):
                raise DecodeError("share of a non-neighbour or two shares of one owner")
            owners.add(s.owner)
            if s.owner not in self._u2:
                raise DecodeError("share of a client that never shared")
            if (s.kind == 0) != (s.owner in u3):
                raise DecodeError("share of the wrong secret for the owner's survival")
            share = Share.from_bytes(s.share)
            if share.x != cfg.share_x(s.owner, sender):
                raise DecodeError("share has the wrong x coordinate")

    # -- stage transitions
    def _advance(self, now: float) -> None:
        got = {c: m for c, m in self._stage.got.items() if c not in self._excluded}
        self.stage_counts[self.state.value] = len(got)
        st = self.state
        try:
            if st is ServerState.ADVERTISE:
                self._after_advertise(got)
            elif st is ServerState.SHARE:
                self._after_share(got)
            elif st is ServerState.MASKED:
                self._after_masked(got)
            elif st is ServerState.CONSISTENCY:
                self._after_consistency(got)
            elif st is ServerState.UNMASK:
                self._after_unmask(got)
                return
        except RoundAborted as exc:
            self._abort(str(exc))
            return
        self.state = _NEXT_STATE[st]
        self._deadline = now + self.config.stage_timeout

    def _need(self, clients: Sized, stage: str) -> None:
        n = len(clients)
        if n < self.config.t:
            raise RoundAborted(
                f"only {n} clients remain after stage {stage}, threshold is {self.config.t}"
            )

    def _next(self, expected: set[str]) -> None:
        self._stage = _Stage(frozenset(expected))

    def _after_advertise(self, got: dict[str, Message]) -> None:
        self._need(got, "advertise")
        self._adv = {c: m for c, m in got.items() if isinstance(m, AdvertiseKeys)}
        rid = self.config.round_id
        for c in self._adv:
            keys = tuple(self._adv[v] for v in self.config.neighbours(c) if v in self._adv)
            self._send(c, RoundKeys(rid, keys))
        self._next(set(self._adv))

    def _after_share(self, got: dict[str, Message]) -> None:
        self._need(got, "share")
        self._u2 = frozenset(got)
        inbox: dict[str, list[tuple[str, bytes]]] = {c: [] for c in got}
        for sender in sorted(got):
            msg = got[sender]
            assert isinstance(msg, ShareKeys)
            for holder, ct in msg.ciphertexts:
                if holder in inbox:
                    inbox[holder].append((sender, ct))
        rid = self.config.round_id
        for c, cts in inbox.items():
            self._forwarded[c] = {s for s, _ in cts}
            self._send(c, ForwardedShares(rid, tuple(cts)))
        self._next(set(got))

    def _after_masked(self, got: dict[str, Message]) -> None:
        accused: dict[str, tuple[str, str]] = {}
        for accuser in sorted(got):
            msg = got[accuser]
            assert isinstance(msg, MaskedInput)
            for v, reason in msg.complaints:
                self._forwarded[accuser].discard(v)  # the accuser did not mask with v
                accused.setdefault(v, (accuser, reason))
        for v, (accuser, reason) in sorted(accused.items()):
            self._exclude(v, f"bad share: {reason}", accuser)
        masked = {c: m for c, m in got.items() if c not in self._excluded}
        self._need(masked, "masked input")
        self._masked = {c: m for c, m in masked.items() if isinstance(m, MaskedInput)}
        self.survivors = tuple(sorted(self._masked))
        self._survivor_blob = _survivor_data(self.config.round_id, self.survivors)
        rid = self.config.round_id
        for c in self.survivors:
            self._send(c, SurvivorSet(rid, self.survivors))
        self._next(set(self.survivors))

    def _after_consistency(self, got: dict[str, Message]) -> None:
        self._need(got, "consistency check")
        self._sigs = {c: m.signature for c, m in got.items() if isinstance(m, ConsistencySig)}
        rid = self.config.round_id
        for c in self._sigs:
            sigs = tuple((v, self._sigs[v]) for v in self.config.neighbours(c) if v in self._sigs)
            self._send(c, SurvivorSigs(rid, sigs))
        self._next(set(self._sigs))

    def _after_unmask(self, got: dict[str, Message]) -> None:
        self._need(got, "unmasking")
        cfg = self.config
        u3 = set(self.survivors)
        b_shares: dict[str, list[tuple[str, UnmaskShare]]] = {c: [] for c in self.survivors}
        s_shares: dict[str, list[tuple[str, UnmaskShare]]] = {c: [] for c in self._u2 - u3}
        for holder, msg in sorted(got.items()):
            assert isinstance(msg, UnmaskShares)
            for s in msg.shares:
                (b_shares if s.kind == 0 else s_shares)[s.owner].append((holder, s))
        total = np.zeros(cfg.length, dtype=cfg.dtype)
        wire = np.dtype(cfg.dtype).newbyteorder("<")
        for c in self.survivors:
            total += np.frombuffer(self._masked[c].vector, dtype=wire)
        for c in self.survivors:
            seed = self._rebuild(c, b_shares[c], "self-mask seed", None)
            total -= expand_mask(seed, cfg.length, bits=cfg.bits, label=SELF_LABEL)
        for v in sorted(s_shares):
            maskers = [u for u in cfg.neighbours(v) if u in u3 and v in self._forwarded.get(u, ())]
            if not maskers:  # nobody in the sum masked with v: nothing to remove
                continue
            s_key = _Agreement(self._rebuild(v, s_shares[v], "masking key", self._adv[v].s_pk))
            for u in maskers:
                seed = pair_seed(cfg, s_key, self._adv[u].s_pk, v, u)
                _apply_pair(total, cfg, seed, v, u)  # -(u's ±mask) = v's view of the pair
        if cfg.bits < total.dtype.itemsize * 8:
            total &= total.dtype.type(cfg.mask)
        self.result = total
        self.state = ServerState.DONE

    def _rebuild(
        self,
        owner: str,
        entries: list[tuple[str, UnmaskShare]],
        what: str,
        public: bytes | None,
    ) -> bytes:
        """Rebuild one secret from its revealed shares, checking them as cheaply as is safe.

        With more than t shares, :func:`securemesh.crypto.shamir.combine`
        checks every extra share against the polynomial of the first t, and a
        masking key is checked against its advertised public key: a wrong share
        cannot pass unnoticed. Only if that check fails, or there are exactly
        t shares (no redundancy), are the owner's signatures on the shares
        verified; a share not signed by its owner is dropped and its holder
        excluded (audited), and the secret is rebuilt from the rest.
        """
        t = self.config.t
        verified = False
        if len(entries) == t:
            entries, verified = self._signed(owner, entries), True
        while True:
            if len(entries) < t:
                raise RoundAborted(
                    f"cannot rebuild the {what} of {owner}: {len(entries)} valid shares, "
                    f"threshold {t}"
                )
            try:
                secret = combine([Share.from_bytes(e.share) for _, e in entries], threshold=t)
                if public is not None and _Agreement(secret).public() != public:
                    raise DecodeError("rebuilt key does not match its public key")
                return secret
            except (DecodeError, LocalError) as exc:
                if verified:
                    raise RoundAborted(
                        f"signed shares of the {what} of {owner} are inconsistent: {exc}"
                    ) from exc
            entries, verified = self._signed(owner, entries), True

    def _signed(
        self, owner: str, entries: list[tuple[str, UnmaskShare]]
    ) -> list[tuple[str, UnmaskShare]]:
        rid, vk = self.config.round_id, self._vk[owner]
        good = []
        for holder, s in entries:
            h = _sha(s.share)
            hb, hs = (h, s.other_hash) if s.kind == 0 else (s.other_hash, h)
            try:
                verify_signature(vk, _share_data(rid, owner, holder, hb, hs), s.signature)
            except AuthenticationError:
                self._excluded.add(holder)
                self._exclusions.append(
                    Exclusion(
                        holder, self.state.value, f"revealed a share of {owner} it did not sign"
                    )
                )
                continue
            good.append((holder, s))
        return good
