"""The persisted sequence counter: real files, reboots, crashes, corruption, concurrency."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.errors import ConfigError, LocalError, StateFileError
from securemesh.wire import SequenceCounter

FAST_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def test_fresh_counter_reserves_a_block_before_use(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    with SequenceCounter(path, block=4) as counter:
        assert not path.exists()  # nothing reserved before the first number
        assert [counter.next() for _ in range(4)] == [0, 1, 2, 3]
        assert counter.reserved == 4
        assert counter.next() == 4
        assert counter.reserved == 8
        assert counter.peek() == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 29
    assert not (tmp_path / "seq.tmp").exists()


def test_reboot_continues_above_everything_used(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    with SequenceCounter(path) as first:
        used = [first.next() for _ in range(10)]
    with SequenceCounter(path) as second:
        after = second.next()
    assert after == 1024 > max(used)


def test_crash_without_close_never_reuses_a_number(tmp_path: Path) -> None:
    """A real process takes numbers and dies without closing (os._exit)."""
    path = tmp_path / "seq"
    script = (
        "import os, sys\n"
        "from securemesh.wire import SequenceCounter\n"
        "c = SequenceCounter(sys.argv[1], block=16)\n"
        "print(' '.join(str(c.next()) for _ in range(40)), flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    used = [int(x) for x in out.split()]
    assert used == list(range(40))
    with SequenceCounter(path, block=16) as counter:  # the dead process's lock is gone
        assert counter.next() == 48  # 40 used, reservation was 48


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=20),
)
def test_numbers_strictly_increase_across_any_number_of_reboots(
    takes: list[int], block: int
) -> None:
    # Many fsyncs: use a RAM-backed filesystem when there is one, so the run
    # does not depend on disk load (durability itself is not what this checks).
    with tempfile.TemporaryDirectory(dir=FAST_DIR) as d:
        path = Path(d) / "seq"
        issued: list[int] = []
        for n in takes:
            with SequenceCounter(path, block=block) as counter:
                issued.extend(counter.next() for _ in range(n))
        assert issued == sorted(set(issued))


def test_initial_value_for_a_new_file(tmp_path: Path) -> None:
    with SequenceCounter(tmp_path / "seq", initial=1_000_000) as counter:
        assert counter.next() == 1_000_000
    with SequenceCounter(tmp_path / "seq", initial=0) as counter:  # the file wins
        assert counter.next() > 1_000_000


@pytest.mark.parametrize(
    "content",
    [b"", b"SMSQ", b"\x00" * 29, b"x" * 30],
)
def test_a_corrupt_state_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "seq"
    path.write_bytes(content)
    with pytest.raises(StateFileError):
        SequenceCounter(path)


def test_a_flipped_bit_in_the_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    with SequenceCounter(path) as counter:
        counter.next()
    good = path.read_bytes()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(StateFileError):
            SequenceCounter(path)
    path.write_bytes(good)
    SequenceCounter(path).close()  # the lock was released after each failure


def test_one_user_per_state_file(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    first = SequenceCounter(path)
    with pytest.raises(StateFileError):
        SequenceCounter(path)
    first.close()
    with SequenceCounter(path) as again:
        again.next()
    with pytest.raises(LocalError):
        first.next()


def test_exhaustion_at_the_top_of_u64(tmp_path: Path) -> None:
    with SequenceCounter(tmp_path / "seq", initial=2**64 - 3) as counter:
        assert counter.next() == 2**64 - 3
        assert counter.next() == 2**64 - 2
        with pytest.raises(LocalError):
            counter.next()
    with SequenceCounter(tmp_path / "seq") as counter, pytest.raises(LocalError):
        counter.next()


def test_invalid_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SequenceCounter(tmp_path / "a", block=0)
    with pytest.raises(ConfigError):
        SequenceCounter(tmp_path / "b", initial=-1)


def test_an_unwritable_directory_is_a_state_file_error(tmp_path: Path) -> None:
    with pytest.raises(StateFileError):
        SequenceCounter(tmp_path / "missing-dir" / "seq")


def test_threads_get_distinct_numbers(tmp_path: Path) -> None:
    results: list[list[int]] = [[] for _ in range(4)]
    with SequenceCounter(tmp_path / "seq", block=64) as counter:

        def work(out: list[int]) -> None:
            out.extend(counter.next() for _ in range(500))

        threads = [threading.Thread(target=work, args=(r,)) for r in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    merged = [n for r in results for n in r]
    assert sorted(merged) == list(range(2000))


def test_repr_has_no_surprises(tmp_path: Path) -> None:
    with SequenceCounter(tmp_path / "seq") as counter:
        assert "next=0" in repr(counter)
    assert os.path.basename(str(counter.path)) == "seq"
