"""The node's directory of known certificates and first-contact token keys.

Theory of operation
-------------------
A node admits a CURVE key (ZAP, :meth:`Directory.authenticate`) and accepts a
message's sender (pipeline step 3, :meth:`Directory.lookup`) only through this
directory, and both are **default deny**:

* A certificate enters only through :meth:`Directory.add_certificate`, which
  runs :func:`~securemesh.crypto.verify_certificate` against the node's
  :class:`~securemesh.crypto.TrustStore` (issuer, signature, delegation,
  validity, revocation). Certificates can therefore come from anywhere — a
  ``node.hello``, a ``route.announce``, an enrollment record, a file — since
  each one is verified against the roots before it is believed.
* The per-message check (:meth:`Directory.lookup`) re-checks only what changes
  over time, cheaply: the validity period at ``now`` and the current
  revocation list of the certificate's root (by serial and node id, for the
  certificate and for the delegated authority that issued it). The signature
  was checked once, on entry.
* A CURVE key is admitted iff it is the ``curve_key`` of a certificate that
  passes :meth:`lookup` now **and that topology lets connect here** (below),
  or the first-contact key of an unexpired join token registered with
  :meth:`admit_token_key` (the enrollment layer, :mod:`securemesh.enroll`,
  registers and retires those). Token peers may only send first-contact
  message types (``enroll.request``); the pipeline enforces that.

**Admission by topology** (issue #9, item 6). Knowing a certificate is not
the same as accepting its holder as a direct peer: a cloud learns the
certificates of every device below its edges (route announcements,
certificate lookups), and a device must not use that to bypass its edge.
Each entry records whether it may connect here (``admissible``): a
certificate added with ``admit=True`` (the default: enrolled here, renewed
directly, operator-supplied ``peers/``) is; one learned second-hand
(``admit=False``: announced by a child, looked up, from the parent's hello)
is not, and a later certificate with the same keys keeps the flag it had.
Besides, a node admits whole tiers it has as children (:attr:`admit_tiers`,
set by the node: a cloud admits ``edge`` and ``cloud`` nodes, an edge
``edge`` nodes); everything else is refused at the transport (ZAP), so a
device enrolled at an edge can reach the cloud only through its edge.

**Key continuity.** When another certificate for a known node id arrives:

* with the *same* keys (a renewal, from any issuer that verifies), it replaces
  the stored one if it expires later (or the stored one is no longer usable);
* with *different* keys it replaces the stored one only if it is newer
  (``not_before`` strictly later) **and** it was issued by a root authority
  (a re-enrollment: the root may re-key any node) or by a delegated authority
  whose name constraint covers the id (an edge re-keying a device in its own
  namespace, e.g. ``edge-1.*``). Anything else -- an older certificate, or an
  unconstrained delegate, or one whose namespace does not cover the id -- is
  refused with :class:`~securemesh.errors.KeyContinuityViolation` and counted
  in :attr:`Directory.refused_key_changes`; the caller (pipeline or node)
  counts and audits the rejection. Without this rule a compromised edge's
  delegate could re-key a device enrolled elsewhere by minting a longer-lived
  certificate for it.

A replacing certificate naming a different CURVE key moves the key mapping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from securemesh.crypto.certs import (
    Certificate,
    RevocationList,
    SignedCertificate,
    SignedRevocationList,
    Tier,
    TrustStore,
    verify_certificate,
)
from securemesh.errors import (
    AuthenticationError,
    CertificateError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    KeyContinuityViolation,
    LocalError,
    UnknownNode,
)
from securemesh.policy import PeerInfo

__all__ = ["Directory", "DirectoryEntry"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """A verified certificate with what the hot path needs precomputed."""

    cert: Certificate
    signed: SignedCertificate
    root_id: str
    issuer_cert: Certificate | None  # the delegated authority that issued it, if any
    peer_info: PeerInfo
    #: may connect to this node directly (module docstring: admission by topology)
    admissible: bool = True

    @property
    def node_id(self) -> str:
        return self.cert.node_id


class Directory:
    """Known certificates by node id and CURVE key, token keys, and the trust store."""

    def __init__(
        self,
        trust: TrustStore,
        *,
        clock: Clock = time.time,
        max_token_keys: int = 10_000,
        max_entries: int = 1_000_000,
    ) -> None:
        self._trust = trust
        self._clock = clock
        self._by_node: dict[str, DirectoryEntry] = {}
        self._by_curve: dict[bytes, str] = {}
        self._tokens: dict[bytes, float] = {}  # first-contact curve key -> expires_at
        self._max_tokens = max_token_keys
        self._max_entries = max_entries
        #: Called with the node ids whose certificates a new revocation list revokes.
        self.on_revoked: list[Callable[[frozenset[str]], None]] = []
        #: Certificates refused because they would re-key a known node (key continuity).
        self.refused_key_changes = 0
        #: Tiers admitted as direct peers whatever the entry's ``admissible`` flag
        #: (``None``: every tier, for a directory that serves no topology).
        self.admit_tiers: frozenset[Tier] | None = None
        #: CURVE keys refused because topology does not let them connect here.
        self.refused_by_topology = 0

    @property
    def trust(self) -> TrustStore:
        return self._trust

    # ----------------------------------------------------------- certificates

    def add_certificate(
        self,
        signed: SignedCertificate | bytes,
        *,
        intermediates: Iterable[SignedCertificate | bytes] = (),
        now: float | None = None,
        admit: bool = True,
    ) -> Certificate:
        """Verify ``signed`` against the trust store and remember it; return the certificate.

        ``intermediates``: delegated-authority certificates that may have issued
        it; each that verifies is also added to the trust store. ``admit``: its
        holder may connect here directly (False for certificates learned
        second-hand; module docstring). Raises a
        :class:`~securemesh.errors.CertificateError` subclass if it does not verify.
        """
        at = self._clock() if now is None else now
        if not isinstance(signed, SignedCertificate):
            signed = SignedCertificate.from_bytes(signed)
        inters = [
            i if isinstance(i, SignedCertificate) else SignedCertificate.from_bytes(i)
            for i in intermediates
        ]
        cert = verify_certificate(signed, trust=self._trust, now=at, intermediates=inters)
        issuer_cert: Certificate | None = None
        root_id = cert.issuer
        if self._trust.root_key(cert.issuer) is None:
            held = self._trust.delegated_authorities.get(cert.issuer)
            for inter in inters:
                if inter != held and inter.unverified_certificate().node_id == cert.issuer:
                    # the trust store keeps the newest (a renewed delegation replaces the
                    # old); one that does not verify now is simply not learned
                    with contextlib.suppress(CertificateError):
                        self._trust.add_delegated_authority(inter, now=at)
            delegate = self._trust.delegated_authorities.get(cert.issuer)
            if delegate is None:  # unreachable: verify_certificate found the issuer
                raise CertificateError("issuing authority vanished")
            issuer_cert = delegate.unverified_certificate()
            root_id = issuer_cert.issuer
        old = self._by_node.get(cert.node_id)
        same_keys = old is not None and old.cert.public_keys() == cert.public_keys()
        entry = DirectoryEntry(
            cert=cert,
            signed=signed,
            root_id=root_id,
            issuer_cert=issuer_cert,
            peer_info=PeerInfo(
                node_id=cert.node_id, tier=cert.tier.value, roles=frozenset(cert.roles)
            ),
            admissible=admit or (same_keys and old is not None and old.admissible),
        )
        if old is not None:
            if old.cert.public_keys() != cert.public_keys():
                self._check_key_change(old, entry)
            elif old.cert.not_after > cert.not_after and self._usable(old, at):
                if entry.admissible and not old.admissible:
                    self._by_node[cert.node_id] = dataclasses.replace(old, admissible=True)
                return old.cert  # keep the longer-lived one we already trust
            if self._by_curve.get(old.cert.curve_key) == cert.node_id:
                del self._by_curve[old.cert.curve_key]
        elif len(self._by_node) >= self._max_entries:
            raise LocalError("directory is full")
        self._by_node[cert.node_id] = entry
        self._by_curve[cert.curve_key] = cert.node_id
        return cert

    def add_delegation(self, signed: SignedCertificate | bytes) -> Certificate:
        """Verify a delegated authority's certificate and trust it (a renewed delegation
        replaces an older one; :meth:`TrustStore.add_delegated_authority`)."""
        return self._trust.add_delegated_authority(signed, now=self._clock())

    def _check_key_change(self, old: DirectoryEntry, new: DirectoryEntry) -> None:
        """Raise KeyContinuityViolation unless ``new`` may re-key ``old``'s node (docstring)."""
        cert = new.cert
        why: str | None = None
        if cert.not_before <= old.cert.not_before:
            why = "it is not newer than the certificate already known"
        elif new.issuer_cert is not None:
            delegation = new.issuer_cert.delegation
            if delegation is None or delegation.name_prefix is None:
                why = f"its issuer {cert.issuer!r} is a delegate without a namespace"
            elif not delegation.permits_name(cert.node_id):  # verify_certificate checked it
                why = f"the id is outside the namespace of {cert.issuer!r}"
        if why is not None:
            self.refused_key_changes += 1
            raise KeyContinuityViolation(
                f"certificate for {cert.node_id!r} from {cert.issuer!r} names other keys "
                f"than the one from {old.cert.issuer!r} already known, and {why}"
            )

    def _usable(self, entry: DirectoryEntry, now: float) -> bool:
        try:
            self._check(entry, now)
        except CertificateError:
            return False
        return True

    def _check(self, entry: DirectoryEntry, now: float) -> None:
        cert = entry.cert
        if now < cert.not_before:
            raise CertificateNotYetValid(f"certificate of {cert.node_id!r} not yet valid")
        if now >= cert.not_after:
            raise CertificateExpired(f"certificate of {cert.node_id!r} expired")
        rl = self._trust.revocation_list(entry.root_id)
        if rl is not None:
            if rl.revokes(cert):
                raise CertificateRevoked(f"{cert.node_id!r} is revoked")
            issuer = entry.issuer_cert
            if issuer is not None and rl.revokes(issuer):
                raise CertificateRevoked(f"issuing authority {issuer.node_id!r} is revoked")
        issuer = entry.issuer_cert
        if issuer is not None and not issuer.is_valid_at(now):
            # the delegation this certificate came with ended; the delegate's renewed one
            # (same signing key, learned since) still vouches for it
            renewed = self._trust.delegated_authorities.get(issuer.node_id)
            current = None if renewed is None else renewed.unverified_certificate()
            if (
                current is None
                or current.verify_key != issuer.verify_key
                or current.delegation is None
                or not current.delegation.allows(cert.tier)
                or not current.delegation.permits_name(cert.node_id)
                or not current.is_valid_at(now)
                or (rl is not None and rl.revokes(current))
            ):
                raise CertificateExpired(f"issuing authority {issuer.node_id!r} is not valid now")

    def lookup(self, node_id: str, *, now: float) -> DirectoryEntry:
        """The entry of ``node_id`` if its certificate is valid and unrevoked at ``now``.

        Raises :class:`~securemesh.errors.UnknownNode`, ``CertificateExpired``,
        ``CertificateNotYetValid`` or ``CertificateRevoked``.
        """
        entry = self._by_node.get(node_id)
        if entry is None:
            raise UnknownNode("no certificate for that node")
        self._check(entry, now)
        return entry

    def certificate(self, node_id: str, *, now: float | None = None) -> Certificate:
        """The verified, currently valid certificate of ``node_id`` (or raise)."""
        return self.lookup(node_id, now=self._clock() if now is None else now).cert

    def signed_certificate(self, node_id: str) -> SignedCertificate | None:
        """The stored signed certificate (not re-checked), e.g. to pass on in a hello."""
        entry = self._by_node.get(node_id)
        return None if entry is None else entry.signed

    def node_for_curve_key(self, curve_key: bytes) -> str | None:
        """The node id whose stored certificate names ``curve_key`` (not re-checked)."""
        return self._by_curve.get(curve_key)

    def remove(self, node_id: str) -> None:
        entry = self._by_node.pop(node_id, None)
        if entry is not None and self._by_curve.get(entry.cert.curve_key) == node_id:
            del self._by_curve[entry.cert.curve_key]

    def node_ids(self) -> list[str]:
        return sorted(self._by_node)

    def __len__(self) -> int:
        return len(self._by_node)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_node

    # ------------------------------------------------------------- token keys

    def admit_token_key(self, curve_public: bytes, expires_at: float) -> None:
        """Admit a join token's first-contact CURVE key until ``expires_at`` (Unix seconds)."""
        if type(curve_public) is not bytes or len(curve_public) != 32:
            raise LocalError("a CURVE public key is 32 bytes")
        now = self._clock()
        if len(self._tokens) >= self._max_tokens:
            self._purge_tokens(now)
            if len(self._tokens) >= self._max_tokens:
                raise LocalError("too many pending join tokens")
        self._tokens[curve_public] = float(expires_at)

    def retire_token_key(self, curve_public: bytes) -> None:
        """Stop admitting a token key (the token was used or withdrawn)."""
        self._tokens.pop(curve_public, None)

    def is_token_key(self, curve_key: bytes, *, now: float | None = None) -> bool:
        expires = self._tokens.get(curve_key)
        if expires is None:
            return False
        if (self._clock() if now is None else now) >= expires:
            del self._tokens[curve_key]
            return False
        return True

    def _purge_tokens(self, now: float) -> None:
        for key in [k for k, exp in self._tokens.items() if now >= exp]:
            del self._tokens[key]

    # ------------------------------------------------------------- admission

    def authenticate(self, curve_key: bytes) -> None:
        """The listener's :data:`~securemesh.transport.KeyAuthenticator` (default deny).

        Returns ``None`` to admit; raises to refuse.
        """
        now = self._clock()
        node_id = self._by_curve.get(curve_key)
        if node_id is not None:
            entry = self.lookup(node_id, now=now)
            if entry.cert.curve_key != curve_key:
                raise AuthenticationError("curve key no longer current for that node")
            tiers = self.admit_tiers
            if entry.admissible or tiers is None or entry.cert.tier in tiers:
                return
            self.refused_by_topology += 1
            raise AuthenticationError("topology does not let that node connect here")
        if self.is_token_key(curve_key, now=now):
            return
        raise AuthenticationError("curve key not admitted")

    # ------------------------------------------------------------- revocation

    def update_revocation_list(self, blob: SignedRevocationList | bytes) -> RevocationList:
        """Verify and install a newer revocation list (rollbacks refused); notify listeners."""
        rl = self._trust.update_revocation_list(blob)
        revoked = frozenset(
            entry.node_id
            for entry in self._by_node.values()
            if entry.root_id == rl.issuer
            and (
                rl.revokes(entry.cert)
                or (entry.issuer_cert is not None and rl.revokes(entry.issuer_cert))
            )
        )
        if revoked:
            for callback in list(self.on_revoked):
                callback(revoked)
        return rl

    def is_admissible(self, node_id: str) -> bool:
        """May ``node_id`` connect here directly (its entry's flag; tiers aside)?"""
        entry = self._by_node.get(node_id)
        return entry is not None and entry.admissible

    def is_authority_tier(self, node_id: str) -> bool:
        entry = self._by_node.get(node_id)
        return entry is not None and entry.cert.tier in (Tier.EDGE, Tier.CLOUD)
