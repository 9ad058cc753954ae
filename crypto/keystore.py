"""Passphrase-encrypted secrets and key files.

Theory of operation
-------------------
A passphrase is stretched with Argon2id (RFC 9106, libsodium's
``crypto_pwhash`` through :mod:`nacl.pwhash.argon2id`) into 64 bytes: the first
32 are the XChaCha20-Poly1305 key, the last 32 a *check key*. The check key
yields a 32-byte passphrase verifier (keyed BLAKE2b), stored in the header, in
the manner of a LUKS key digest: it lets us tell "wrong passphrase" from
"damaged file" without weakening anything, since computing it costs the same
Argon2id run as trying a decryption. The whole header (magic, version, KDF
parameters, salt, nonce, verifier, checksum) is the AEAD's associated data,
so no byte of the file can change without detection.

File layout, version 1 (all integers big-endian)::

    offset  size  field
    0       8     magic  b"SMKEYF\\x00\\x01"
    8       1     format version = 1
    9       1     KDF id = 1 (Argon2id v1.3)
    10      4     opslimit   (u32, 1..MAX_OPSLIMIT)
    14      4     memlimit   (u32 bytes, MEMLIMIT_MIN..MAX_MEMLIMIT)
    18      16    salt
    34      24    XChaCha20-Poly1305 nonce
    58      32    verifier = BLAKE2b-256(key=check_key, person=b"securemesh-kfchk",
                                     data=bytes 0..58)
    90      16    checksum = BLAKE2b-128(person=b"securemesh-kfhdr", data=bytes 0..90)
    106     n+16  ciphertext || tag of the secret, AAD = bytes 0..106

Opening checks, in order: total size (at most :data:`MAX_FILE_SIZE`), magic,
version, KDF id, parameter bounds (so a crafted header cannot make us allocate
gigabytes), header checksum -> :class:`CorruptKeyFile`; verifier ->
:class:`WrongPassphrase`; AEAD tag -> :class:`CorruptKeyFile`.

Passphrases are ``str`` (NFC-normalized, then UTF-8) or ``bytes``; empty ones
are refused.

Files are written atomically: a temporary file in the same directory created
with ``os.open(..., 0o600)`` and ``O_EXCL``, written, fsynced, then moved into
place with :func:`os.replace` (or hard-linked when overwriting is refused, which
is atomic and never clobbers), and the directory fsynced.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import nacl.pwhash.argon2id as _argon2id

from securemesh.crypto import aead
from securemesh.errors import (
    AuthenticationError,
    CorruptKeyFile,
    KeyStoreError,
    LocalError,
    WrongPassphrase,
)

__all__ = [
    "DEFAULT_PARAMS",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_FILE_SIZE",
    "MAX_SECRET_SIZE",
    "UNSAFE_FAST_PARAMS",
    "KdfParams",
    "kdf_params_of",
    "open_secret",
    "read_secret_file",
    "seal_secret",
    "write_file_atomic",
    "write_secret_file",
]

MAGIC = b"SMKEYF\x00\x01"
FORMAT_VERSION = 1
KDF_ARGON2ID = 1
_SALT_SIZE = 16
_VERIFIER_SIZE = 32
_CHECKSUM_SIZE = 16
_FIXED = struct.Struct(">8sBBII16s24s")
HEADER_SIZE = _FIXED.size + _VERIFIER_SIZE + _CHECKSUM_SIZE  # 106
MAX_FILE_SIZE = 64 * 1024
MAX_SECRET_SIZE = MAX_FILE_SIZE - HEADER_SIZE - aead.TAG_SIZE


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters; stored in every file so old files stay readable."""

    opslimit: int
    memlimit: int

    MAX_OPSLIMIT: ClassVar[int] = 16
    MAX_MEMLIMIT: ClassVar[int] = 1 << 30  # 1 GiB

    def __post_init__(self) -> None:
        if type(self.opslimit) is not int or type(self.memlimit) is not int:
            raise LocalError("KDF parameters are integers")
        if not _argon2id.OPSLIMIT_MIN <= self.opslimit <= self.MAX_OPSLIMIT:
            raise LocalError(f"opslimit must be {_argon2id.OPSLIMIT_MIN}..{self.MAX_OPSLIMIT}")
        if not _argon2id.MEMLIMIT_MIN <= self.memlimit <= self.MAX_MEMLIMIT:
            raise LocalError(f"memlimit must be {_argon2id.MEMLIMIT_MIN}..{self.MAX_MEMLIMIT}")


#: About 0.2-0.3 s and 128 MiB on a current x86 core: between libsodium's
#: INTERACTIVE (64 MiB) and MODERATE (256 MiB) profiles.
DEFAULT_PARAMS = KdfParams(opslimit=3, memlimit=128 * 1024 * 1024)

#: **Offers no protection against guessing.** Libsodium's minimum cost, for tests only.
UNSAFE_FAST_PARAMS = KdfParams(opslimit=_argon2id.OPSLIMIT_MIN, memlimit=_argon2id.MEMLIMIT_MIN)


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    if isinstance(passphrase, str):
        raw = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif isinstance(passphrase, bytes | bytearray):
        raw = bytes(passphrase)
    else:
        raise LocalError("a passphrase is str or bytes")
    if not raw:
        raise LocalError("the passphrase must not be empty")
    return raw


def _derive(passphrase: bytes, salt: bytes, params: KdfParams) -> tuple[bytes, bytes]:
    okm = _argon2id.kdf(64, passphrase, salt, opslimit=params.opslimit, memlimit=params.memlimit)
    return okm[:32], okm[32:]


def _verifier(check_key: bytes, prefix: bytes) -> bytes:
    return hashlib.blake2b(
        prefix, digest_size=_VERIFIER_SIZE, key=check_key, person=b"securemesh-kfchk"
    ).digest()


def _checksum(prefix: bytes) -> bytes:
    return hashlib.blake2b(prefix, digest_size=_CHECKSUM_SIZE, person=b"securemesh-kfhdr").digest()


def seal_secret(
    data: bytes,
    passphrase: str | bytes,
    *,
    params: KdfParams = DEFAULT_PARAMS,
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt ``data`` under ``passphrase``; return the complete key-file bytes.

    ``salt`` and ``nonce`` are for known-answer tests only; leave them ``None``.
    """
    if len(data) > MAX_SECRET_SIZE:
        raise LocalError(f"a secret is at most {MAX_SECRET_SIZE} bytes")
    salt = secrets.token_bytes(_SALT_SIZE) if salt is None else salt
    nonce = secrets.token_bytes(aead.NONCE_SIZE) if nonce is None else nonce
    if len(salt) != _SALT_SIZE or len(nonce) != aead.NONCE_SIZE:
        raise LocalError("wrong salt or nonce size")
    key, check_key = _derive(_passphrase_bytes(passphrase), salt, params)
    fixed = _FIXED.pack(
        MAGIC, FORMAT_VERSION, KDF_ARGON2ID, params.opslimit, params.memlimit, salt, nonce
    )
    with_verifier = fixed + _verifier(check_key, fixed)
    header = with_verifier + _checksum(with_verifier)
    sealed = aead.seal(key, bytes(data), aad=header, nonce=nonce)
    return header + sealed[aead.NONCE_SIZE :]


def _open_header(blob: bytes) -> tuple[KdfParams, bytes, bytes]:
    """Size, magic, version, KDF id and parameter bounds: ``(params, salt, nonce)``."""
    if len(blob) > MAX_FILE_SIZE:
        raise CorruptKeyFile(f"key file larger than {MAX_FILE_SIZE} bytes")
    if len(blob) < HEADER_SIZE + aead.TAG_SIZE:
        raise CorruptKeyFile("key file truncated")
    magic, version, kdf, opslimit, memlimit, salt, nonce = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise CorruptKeyFile("not a SecureMesh key file (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptKeyFile(f"unsupported key file version {version}")
    if kdf != KDF_ARGON2ID:
        raise CorruptKeyFile(f"unsupported KDF id {kdf}")
    try:
        params = KdfParams(opslimit=opslimit, memlimit=memlimit)
    except LocalError as exc:
        raise CorruptKeyFile(f"KDF parameters out of bounds: {exc}") from exc
    return params, salt, nonce


def kdf_params_of(blob: bytes) -> KdfParams:
    """The Argon2id cost a key file was sealed with (to seal another secret alike).

    Checks the header as :func:`open_secret` does before deriving anything
    (CorruptKeyFile), without a passphrase.
    """
    return _open_header(bytes(blob))[0]


def open_secret(blob: bytes, passphrase: str | bytes) -> bytes:
    """Decrypt key-file bytes. WrongPassphrase or CorruptKeyFile on failure."""
    raw_passphrase = _passphrase_bytes(passphrase)
    blob = bytes(blob)
    params, salt, nonce = _open_header(blob)
    fixed_end = _FIXED.size
    verifier_end = fixed_end + _VERIFIER_SIZE
    header = blob[:HEADER_SIZE]
    if not hmac.compare_digest(_checksum(blob[:verifier_end]), blob[verifier_end:HEADER_SIZE]):
        raise CorruptKeyFile("key file header damaged (checksum mismatch)")
    key, check_key = _derive(raw_passphrase, salt, params)
    expected = _verifier(check_key, blob[:fixed_end])
    if not hmac.compare_digest(expected, blob[fixed_end:verifier_end]):
        raise WrongPassphrase("wrong passphrase for this key file")
    try:
        return aead.open_sealed(key, nonce + blob[HEADER_SIZE:], aad=header)
    except AuthenticationError as exc:  # the body was altered
        raise CorruptKeyFile("key file contents damaged (authentication failed)") from exc


def write_file_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    overwrite: bool = True,
    durable: bool = True,
) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``.

    Readers see either the old file or the complete new one, never a partial
    write. With ``overwrite=False`` an existing file is never replaced
    (:class:`KeyStoreError`). ``durable=False`` skips the two fsyncs (file and
    directory): still atomic for readers, but a power failure may lose the
    newest write — only for snapshots that are rewritten anyway (a daemon's
    ``status.json``), never for keys, certificates or counters.
    """
    target = Path(path)
    directory = target.parent
    tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits; never adds any
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # atomic and never clobbers
            except FileExistsError as exc:
                raise KeyStoreError(f"{target} exists; refusing to overwrite") from exc
            except OSError:  # no hard links here (some FUSE/SMB mounts): check, then rename
                if target.exists():
                    raise KeyStoreError(f"{target} exists; refusing to overwrite") from None
                os.replace(tmp, target)
            else:
                os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def write_secret_file(
    path: str | os.PathLike[str],
    data: bytes,
    passphrase: str | bytes,
    *,
    params: KdfParams = DEFAULT_PARAMS,
    overwrite: bool = False,
) -> None:
    """Seal ``data`` under ``passphrase`` and write it to ``path`` (0600, atomic)."""
    write_file_atomic(path, seal_secret(data, passphrase, params=params), overwrite=overwrite)


def read_secret_file(path: str | os.PathLike[str], passphrase: str | bytes) -> bytes:
    """Read and decrypt a key file written by :func:`write_secret_file`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as exc:
        raise KeyStoreError(f"key file {os.fspath(path)!r} not found") from exc
    except OSError as exc:
        raise KeyStoreError(f"cannot open key file {os.fspath(path)!r}: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CorruptKeyFile("key file is not a regular file")
        if info.st_size > MAX_FILE_SIZE:
            raise CorruptKeyFile(f"key file larger than {MAX_FILE_SIZE} bytes")
        chunks = []
        remaining = MAX_FILE_SIZE + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    return open_secret(b"".join(chunks), passphrase)
