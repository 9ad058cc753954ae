"""Origin-signature checks for appends in worker processes (private; used by :mod:`.log`).

Why processes: libsodium releases the GIL while it verifies, but a verifier
*thread* must take the GIL back after every signature, and while the
appending thread runs Python (strict decoding, sequencing) it waits for it up
to the interpreter's switch interval each time: measured here, a verifier
thread next to a busy thread managed ~3-5k signatures/s instead of ~17k/s. A
worker process has no GIL to share.

Workers are ``python -c`` subprocesses of this interpreter (not
multiprocessing: they never re-import the caller's ``__main__``). Protocol over
their stdin/stdout, no pickle: after a ready byte, the parent sends each chunk
as a length-prefixed run of ``(position u32, entry length u32, verify key 32
bytes, entry)`` records and later reads one length-prefixed reply per chunk,
in order: ``(position u32, code u8)`` for each entry that failed (``1``
signed by a different key, ``2`` signature does not verify). The parent has
already decoded every entry strictly (framing
included), so the worker only slices the header: key id, signature, event
bytes (:meth:`~securemesh.audit.events.SignedEvent.from_bytes` offsets) and
runs exactly the checks of :func:`~._entry.verify_decoded`.

The pool is shared by every :class:`~securemesh.audit.log.AuditLog` of the
process and used by one append call at a time (others use threads). If a
worker cannot be started or dies, the pool is disabled and the caller checks
the remaining chunks itself.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO, Final

__all__ = ["CODE_BAD_SIGNATURE", "CODE_OTHER_KEY", "SignaturePool", "serve", "shared_pool"]

CODE_OTHER_KEY: Final = 1
CODE_BAD_SIGNATURE: Final = 2
_REC: Final = struct.Struct(">II")
_BAD: Final = struct.Struct(">IB")
_KEY_ID: Final = slice(5, 13)
_SIG: Final = slice(13, 77)
_BODY_AT: Final = 77


_LEN: Final = struct.Struct(">I")
_START_TIMEOUT_S: Final = 30.0
_READY: Final = b"\x01"


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError("the other end closed the pipe")
    return data


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """Worker process: verify length-prefixed chunks from ``stdin`` until it closes."""
    from nacl._sodium import ffi, lib  # type: ignore[import-not-found]  # noqa: PLC0415

    domain = b"securemesh/audit-event/v1\x00"
    buf = ffi.new("unsigned char[]", 64 * 1024)
    null = ffi.NULL
    raw_open = lib.crypto_sign_open
    key_ids: dict[bytes, bytes] = {}
    rec = _REC
    bad_rec = _BAD
    stdout.write(_READY)
    stdout.flush()
    while True:
        try:
            (size,) = _LEN.unpack(_read_exact(stdin, _LEN.size))
            data = _read_exact(stdin, size)
        except EOFError:
            return
        out = []
        at = 0
        while at < size:
            pos, n = rec.unpack_from(data, at)
            vk = data[at + 8 : at + 40]
            entry = data[at + 40 : at + 40 + n]
            at += 40 + n
            kid = key_ids.get(vk)
            if kid is None:
                kid = key_ids[vk] = hashlib.sha256(vk).digest()[:8]
            if entry[_KEY_ID] != kid:
                out.append(bad_rec.pack(pos, CODE_OTHER_KEY))
                continue
            signed = entry[_SIG] + domain + entry[_BODY_AT:]
            if len(signed) > len(buf) or raw_open(buf, null, signed, len(signed), vk) != 0:
                out.append(bad_rec.pack(pos, CODE_BAD_SIGNATURE))
        reply = b"".join(out)
        try:
            stdout.write(_LEN.pack(len(reply)) + reply)
            stdout.flush()
        except (BrokenPipeError, OSError):
            return


class SignaturePool:
    """Worker processes checking signature chunks; see the module docstring."""

    def __init__(self, workers: int) -> None:
        self._n = workers
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._broken = False
        self._next = 0

    @property
    def usable(self) -> bool:
        return not self._broken

    def try_acquire(self) -> bool:
        """Take the pool for one append call (False if busy or broken)."""
        if self._broken or not self._lock.acquire(blocking=False):
            return False
        if self._broken or not self._start():
            self._lock.release()
            return False
        self._next = 0
        return True

    def release(self) -> None:
        self._lock.release()

    def _start(self) -> bool:
        if self._procs:
            return True
        try:
            for _ in range(self._n):
                proc = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
                    [sys.executable, "-c", _WORKER_CODE],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                self._procs.append(proc)
            for proc in self._procs:
                assert proc.stdout is not None
                ready, _, _ = select.select([proc.stdout], [], [], _START_TIMEOUT_S)
                if not ready or _read_exact(proc.stdout, 1) != _READY:
                    raise EOFError("worker did not start")
        except (OSError, EOFError, ValueError):  # cannot run workers here: use threads
            self._broken = True
            self.shutdown()
            return False
        return True

    def send(self, items: Sequence[tuple[int, bytes, bytes]]) -> int | None:
        """Send ``(position, entry, verify key)`` items to the next worker; its index or None."""
        blob = b"".join(_REC.pack(pos, len(entry)) + vk + entry for pos, entry, vk in items)
        w = self._next
        self._next = (w + 1) % len(self._procs)
        stdin = self._procs[w].stdin
        try:
            assert stdin is not None
            stdin.write(_LEN.pack(len(blob)) + blob)
            stdin.flush()
        except (OSError, ValueError):
            self._broken = True
            return None
        return w

    def receive(self, worker: int) -> list[tuple[int, int]] | None:
        """The next reply of ``worker``: ``[(position, code)]``, or None if it died."""
        stdout = self._procs[worker].stdout
        try:
            assert stdout is not None
            (size,) = _LEN.unpack(_read_exact(stdout, _LEN.size))
            data = _read_exact(stdout, size)
        except (OSError, EOFError, ValueError):
            self._broken = True
            return None
        return [_BAD.unpack_from(data, k) for k in range(0, len(data), _BAD.size)]

    def shutdown(self) -> None:
        for proc in self._procs:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []


_WORKER_CODE: Final = (
    "import sys\n"
    "from securemesh.audit._sigpool import serve\n"
    "serve(sys.stdin.buffer, sys.stdout.buffer)\n"
)


_shared: tuple[int, SignaturePool] | None = None
_shared_lock = threading.Lock()


def shared_pool() -> SignaturePool:
    """This process's pool (one worker per core, at most 2), started on first use.

    A forked child never uses its parent's workers: it gets a pool of its own.
    """
    global _shared  # noqa: PLW0603 - one pool per process
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            pool = SignaturePool(max(1, min(2, os.cpu_count() or 1)))
            _shared = (os.getpid(), pool)
            atexit.register(pool.shutdown)
        return _shared[1]
