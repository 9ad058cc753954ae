"""Operator-level functions behind ``securemesh audit …`` (the CLI is a thin shell over these).

* The **log key** is an Ed25519 key whose name is the log's origin line
  (C2SP checkpoint origin = signed-note key name). :func:`create_log_key`
  writes the secret (``{"name", "seed"}`` JSON) into a passphrase-encrypted
  key file of :mod:`securemesh.crypto.keystore` (Argon2id →
  XChaCha20-Poly1305, ``0600``, atomic) and the public *verifier key* string
  (Go ``note`` format, ``<name>+<key id>+<base64 key>``) next to it as
  ``<file>.pub``. Verifiers need only the public string.
  Log key files written before the key store was used hold the same JSON in
  plain text; :func:`load_log_key` still reads them (no passphrase needed)
  and :func:`rewrap_log_key` encrypts one in place (``securemesh audit
  rewrap-log-key``; the cloud daemon does it by itself at start).
* :func:`show_entry` and :func:`prove_entry` check the entry's inclusion proof
  against the latest signed checkpoint with the log's public key before
  returning it, and the event's origin signature with the registry key.
* :func:`verify_stored_log` is ``audit verify``: :func:`~.verify.verify_log`
  plus the client's last-seen checkpoint file (read before, written after a
  successful verification).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from securemesh.audit._entry import decode_entry
from securemesh.audit.checkpoint import format_verifier_key, open_checkpoint, parse_verifier_key
from securemesh.audit.events import AuditEvent
from securemesh.audit.log import DEFAULT_LOG_ORIGIN, AuditLog, TreeHead
from securemesh.audit.merkle import leaf_hash, verify_inclusion
from securemesh.audit.paths import DATA_DIR_ENV, DB_ENV, default_data_dir, default_db_url
from securemesh.audit.proofs import build_proof_bundle
from securemesh.audit.query import iter_entries
from securemesh.audit.verify import (
    LastSeen,
    VerifyReport,
    load_last_seen,
    save_last_seen,
    verify_log,
)
from securemesh.crypto import keystore
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import ConfigError, LocalError

__all__ = [
    "DB_ENV",
    "DATA_DIR_ENV",
    "LogKey",
    "ShownEntry",
    "create_log_key",
    "default_data_dir",
    "default_db_url",
    "event_json",
    "export_jsonl",
    "load_log_key",
    "load_verifier",
    "log_key_is_encrypted",
    "prove_entry",
    "rewrap_log_key",
    "show_entry",
    "verify_stored_log",
]

_MAX_KEY_FILE: Final = 4096


@dataclass(frozen=True)
class LogKey:
    """The log's signing key and its name (= checkpoint origin)."""

    name: str
    signer: Ed25519Signer
    #: read from a plain (pre-key-store) file: :func:`rewrap_log_key` encrypts it
    plain: bool = False

    @property
    def verifier(self) -> str:
        return format_verifier_key(self.name, self.signer.verify_key)

    def __repr__(self) -> str:
        return f"LogKey({self.verifier})"


def _secret_of(key: LogKey) -> bytes:
    return json.dumps({"name": key.name, "seed": key.signer.seed().hex()}).encode()


def create_log_key(
    path: str | Path,
    *,
    passphrase: str | bytes,
    name: str = DEFAULT_LOG_ORIGIN,
    force: bool = False,
    params: keystore.KdfParams = keystore.DEFAULT_PARAMS,
) -> LogKey:
    """Generate a log key: ``path`` encrypted under ``passphrase``, ``path.pub`` its verifier."""
    p = Path(path)
    if p.exists() and not force:
        raise ConfigError(f"{p} exists (use --force to replace the log key)")
    key = LogKey(name, Ed25519Signer.generate())
    format_verifier_key(name, key.signer.verify_key)  # validates the name
    p.parent.mkdir(parents=True, exist_ok=True)
    keystore.write_secret_file(p, _secret_of(key), passphrase, params=params, overwrite=True)
    Path(str(p) + ".pub").write_text(key.verifier + "\n", encoding="utf-8")
    return key


def _read_key_file(p: Path) -> bytes:
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the log key {p}: {exc.strerror}") from exc
    if len(raw) > keystore.MAX_FILE_SIZE:
        raise ConfigError(f"{p} is not a log key file")
    return raw


def log_key_is_encrypted(path: str | Path) -> bool:
    """Does the log key file need a passphrase (key store format), or is it a plain one?"""
    return _read_key_file(Path(path)).startswith(keystore.MAGIC)


def load_log_key(path: str | Path, passphrase: str | bytes | None = None) -> LogKey:
    """The log key in ``path``: an encrypted key file (``passphrase`` needed) or a plain one.

    WrongPassphrase / CorruptKeyFile for a bad encrypted file, ConfigError otherwise.
    """
    p = Path(path)
    raw = _read_key_file(p)
    plain = not raw.startswith(keystore.MAGIC)
    if not plain:
        if passphrase is None:
            raise ConfigError(f"the log key {p} is encrypted: its passphrase is needed")
        raw = keystore.open_secret(raw, passphrase)
    elif len(raw) > _MAX_KEY_FILE:
        raise ConfigError(f"{p} is not a log key file")
    try:
        doc = json.loads(raw)
        seed = bytes.fromhex(doc["seed"])
        return LogKey(str(doc["name"]), Ed25519Signer.from_seed(seed), plain=plain)
    except (ValueError, KeyError, TypeError, LocalError) as exc:
        raise ConfigError(f"{p} is not a log key file") from exc


def rewrap_log_key(
    path: str | Path,
    passphrase: str | bytes,
    *,
    params: keystore.KdfParams = keystore.DEFAULT_PARAMS,
) -> LogKey:
    """Encrypt a plain log key file in place under ``passphrase`` (atomic; same key).

    An already encrypted file is only opened (so the passphrase is checked) and
    left as it is. The ``.pub`` verifier does not change.
    """
    key = load_log_key(path, passphrase)
    if key.plain:
        keystore.write_secret_file(path, _secret_of(key), passphrase, params=params, overwrite=True)
    return LogKey(key.name, key.signer)


def load_verifier(text_or_path: str) -> tuple[str, bytes]:
    """A verifier key string, or a file holding one (e.g. the ``.pub`` file)."""
    text = text_or_path.strip()
    if "+" not in text and Path(text).exists():
        with open(text, "rb") as f:  # bounded: not a key file if it is larger
            raw = f.read(_MAX_KEY_FILE + 1)
        if len(raw) > _MAX_KEY_FILE:
            raise ConfigError(f"{text} is not a log verifier key file (too large)")
        text = raw.decode("utf-8", errors="replace").strip()
    try:
        return parse_verifier_key(text)
    except Exception as exc:
        raise ConfigError(f"not a log verifier key: {text_or_path!r}") from exc


def event_json(event: AuditEvent) -> dict[str, Any]:
    data: dict[str, Any] = event.model_dump(mode="json")
    return data


@dataclass(frozen=True)
class ShownEntry:
    index: int
    event: AuditEvent
    entry: bytes
    head: TreeHead
    proof: list[bytes]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "event": event_json(self.event),
            "entry": base64.b64encode(self.entry).decode("ascii"),
            "leaf_hash": leaf_hash(self.entry).hex(),
            "tree_size": self.head.size,
            "root": self.head.root.hex(),
            "inclusion_proof": [h.hex() for h in self.proof],
            "checkpoint": self.head.note.decode("utf-8"),
            "verified": True,
        }


def show_entry(log: AuditLog, index: int, *, log_key: tuple[str, bytes]) -> ShownEntry:
    """Entry ``index`` with its origin signature and inclusion proof checked.

    The proof is checked against the latest checkpoint, itself checked with the
    log's public key ``log_key = (name, verify key)``.
    """
    name, vk = log_key
    entry, head, proof = log.prove_entry(index)
    cp = open_checkpoint(head.note, key_name=name, verify_key=vk, origin=name)
    verify_inclusion(leaf_hash(entry), index, cp.size, proof, cp.root_hash)
    decoded = decode_entry(entry)
    # the origin's registered key that the entry's key id names (a key history)
    event = decoded.signed.verify(log.registered_key(decoded.origin, decoded.signed.key_id))
    return ShownEntry(index, event, entry, head, proof)


def prove_entry(log: AuditLog, index: int, *, log_key: tuple[str, bytes]) -> bytes:
    """An offline proof bundle (:mod:`.proofs`) for entry ``index``, checked first."""
    shown = show_entry(log, index, log_key=log_key)
    return build_proof_bundle(
        entry=shown.entry,
        leaf_index=index,
        tree_size=shown.head.size,
        inclusion_proof=shown.proof,
        checkpoint_note=shown.head.note,
        origin_verify_key=log.registered_key(
            shown.event.origin, decode_entry(shown.entry).signed.key_id
        ),
    )


def export_jsonl(log: AuditLog, out: IO[str]) -> int:
    """Write every entry as one JSON line (index, base64 entry, decoded event)."""
    n = 0
    for index, entry in iter_entries(log.engine):
        try:
            event: dict[str, Any] | None = event_json(decode_entry(entry).signed.unverified_event())
        except (LocalError, ValueError):  # RemoteError is a ValueError
            event = None
        out.write(
            json.dumps(
                {
                    "index": index,
                    "entry": base64.b64encode(entry).decode("ascii"),
                    "event_unverified": event,
                },
                sort_keys=True,
                separators=(",", ":"),
            )
            + "\n"
        )
        n += 1
    return n


def verify_stored_log(
    log: AuditLog,
    *,
    log_key: tuple[str, bytes],
    state_path: str | Path | None,
    threads: int = 2,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """``audit verify``: full verification plus the client's last-seen checkpoint.

    On success the latest checkpoint is saved to ``state_path`` (if given).
    ``full`` re-checks origin signatures below the last-seen size too.
    """
    name, vk = log_key
    last = load_last_seen(state_path) if state_path is not None else None
    report = verify_log(
        log.engine,
        log_verify_key=vk,
        log_origin=name,
        last_seen=last,
        threads=threads,
        recheck_signatures=full,
        progress=progress,
    )
    if state_path is not None and report.latest_note is not None:
        save_last_seen(state_path, LastSeen(name, report.size, report.root, report.latest_note))
    return report


def iter_jsonl_entries(lines: Iterator[str]) -> Iterator[bytes]:
    """Signed events from an ``audit export`` file or from lines of base64."""
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            line = str(json.loads(line)["entry"])
        yield base64.b64decode(line, validate=True)
