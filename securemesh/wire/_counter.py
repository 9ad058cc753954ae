"""A sender's sequence counter that never reuses a number, across crashes and reboots.

Theory of operation
-------------------
Receivers refuse a sequence number they have seen (or one left of their
window), so a sender that restarts from 0 after a reboot would be locked out
at best, and at worst — if a receiver lost its state too — could have old
messages replayed against it. The counter therefore persists a *reservation*:
before handing out any number in ``[r, r + block)`` it durably writes
``r + block`` to its state file (write to a temporary file, ``fsync``,
``os.replace``, ``fsync`` the directory). After a crash or reboot it resumes
at the stored reservation, skipping at most ``block - 1`` unused numbers —
never reusing one. With ``block = 1024`` a device writes its flash once per
1,024 messages.

State file (29 bytes)::

    b"SMSQ" || u8(1) || u64(reserved, big-endian) || BLAKE2b-128(first 13 bytes)

A missing file starts the counter at ``initial`` (default 0). A file that is
truncated, altered or from another format raises
:class:`~securemesh.errors.StateFileError`: guessing would risk reuse.

Only one counter may use a state file at a time: the constructor takes an
exclusive, non-blocking ``flock`` on ``<path>.lock`` and holds it until
:meth:`SequenceCounter.close`; a second user (another process or another
instance) gets :class:`~securemesh.errors.StateFileError`. ``next()`` is
thread-safe.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Final

from securemesh.errors import ConfigError, LocalError, StateFileError

if sys.platform != "win32":
    import fcntl

__all__ = ["SequenceCounter"]

_MAGIC: Final = b"SMSQ"
_VERSION: Final = 1
_BODY = struct.Struct(">4sBQ")
_CHECK_SIZE: Final = 16
_FILE_SIZE: Final = _BODY.size + _CHECK_SIZE
_U64_MAX: Final = 2**64 - 1


def _encode_state(reserved: int) -> bytes:
    body = _BODY.pack(_MAGIC, _VERSION, reserved)
    return body + hashlib.blake2b(body, digest_size=_CHECK_SIZE).digest()


def _decode_state(data: bytes) -> int:
    if len(data) != _FILE_SIZE:
        raise StateFileError("sequence counter state file has the wrong size")
    body, check = data[: _BODY.size], data[_BODY.size :]
    if hashlib.blake2b(body, digest_size=_CHECK_SIZE).digest() != check:
        raise StateFileError("sequence counter state file is corrupt")
    magic, version, reserved = _BODY.unpack(body)
    if magic != _MAGIC or version != _VERSION:
        raise StateFileError("not a sequence counter state file")
    return int(reserved)


class SequenceCounter:
    """Monotonic u64 counter persisted by block reservation (see module docstring)."""

    DEFAULT_BLOCK: ClassVar[int] = 1024

    __slots__ = ("_block", "_closed", "_lock", "_lock_fd", "_next", "_path", "_reserved")

    def __init__(
        self, path: str | os.PathLike[str], *, block: int = DEFAULT_BLOCK, initial: int = 0
    ) -> None:
        if not isinstance(block, int) or block < 1:
            raise ConfigError("block must be a positive int")
        if not isinstance(initial, int) or not 0 <= initial <= _U64_MAX:
            raise ConfigError("initial must be a u64")
        self._path = Path(path)
        self._block = block
        self._lock = threading.Lock()
        self._closed = False
        self._lock_fd = self._take_file_lock()
        try:
            try:
                data = self._path.read_bytes()
            except FileNotFoundError:
                start = initial
            except OSError as exc:
                raise StateFileError(f"cannot read {self._path}: {exc}") from exc
            else:
                start = _decode_state(data)
        except BaseException:
            self._release_file_lock()
            raise
        self._next = start
        self._reserved = start  # nothing usable is reserved until the first next()

    def _take_file_lock(self) -> int:
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateFileError(f"cannot open {lock_path}: {exc}") from exc
        if sys.platform != "win32":
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                raise StateFileError(f"{self._path} is in use by another counter") from exc
        return fd

    def _release_file_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def path(self) -> Path:
        return self._path

    @property
    def reserved(self) -> int:
        """The persisted bound: every number handed out so far is below it."""
        return self._reserved

    def peek(self) -> int:
        """The number the next :meth:`next` call will return."""
        return self._next

    def next(self) -> int:
        """Return a never-used sequence number, persisting a new block first if needed."""
        with self._lock:
            if self._closed:
                raise LocalError("sequence counter is closed")
            value = self._next
            if value >= _U64_MAX:  # the reservation must stay expressible as a u64
                raise LocalError("sequence counter exhausted")
            if value >= self._reserved:
                self._persist(min(value + self._block, _U64_MAX))
            self._next = value + 1
            return value

    def _persist(self, reserved: int) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                state = _encode_state(reserved)
                if os.write(fd, state) != len(state):
                    raise OSError("short write")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._path)
            dir_fd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StateFileError(f"cannot persist {self._path}: {exc}") from exc
        self._reserved = reserved

    def close(self) -> None:
        """Stop handing out numbers and release the state file for another user."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release_file_lock()

    def __enter__(self) -> SequenceCounter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lock_fd", -1) >= 0:
            os.close(self._lock_fd)

    def __repr__(self) -> str:
        return f"SequenceCounter(path={str(self._path)!r}, next={self._next})"
