"""The shared CLI conventions of ``securemesh.cli._common`` (in-process, deterministic)."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemesh.cli._common import (
    CliError,
    Progress,
    accept_relative_times,
    data_dir_options,
    format_options,
    iso_utc,
    parse_time_arg,
    print_record,
    print_records,
    resolve_data_dir,
    time_range_options,
)

# 2026-12-07T13:08:09.250Z, a Monday
NOW = dt.datetime(2026, 12, 7, 13, 8, 9, 250_000, tzinfo=dt.UTC).timestamp()
MIDNIGHT = dt.datetime(2026, 12, 7, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("today", MIDNIGHT),
        ("Yesterday", MIDNIGHT - 86400),
        ("-1h", NOW - 3600),
        ("-30m", NOW - 1800),
        ("-2d", NOW - 2 * 86400),
        ("-90s", NOW - 90),
        ("1w", NOW - 7 * 86400),
        ("2026-12-07T10:00:00Z", MIDNIGHT + 10 * 3600),
        ("2026-12-07T10:00:00+01:00", MIDNIGHT + 9 * 3600),
        ("2026-12-07T10:00:00", MIDNIGHT + 10 * 3600),  # no zone: UTC
        ("2026-12-07", MIDNIGHT),
    ],
)
def test_parse_time_arg(text: str, expected: float) -> None:
    assert parse_time_arg(text, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "yesterday-ish", "-1y", "1 hour ago", "-h", "2026-13-01"])
def test_parse_time_arg_refuses(text: str) -> None:
    with pytest.raises(CliError, match="cannot read time"):
        parse_time_arg(text, now=NOW)


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_iso_utc_round_trips_through_parse(ms: int) -> None:
    stamp = iso_utc(ms / 1000)
    assert stamp.endswith("Z")
    assert len(stamp) == len("2026-12-07T13:08:09.250Z")
    assert round(parse_time_arg(stamp, now=NOW) * 1000) == ms


def test_iso_utc_format() -> None:
    assert iso_utc(NOW) == "2026-12-07T13:08:09.250Z"


def test_relative_times_are_option_values() -> None:
    parser = accept_relative_times(argparse.ArgumentParser(parents=[time_range_options()]))
    args = parser.parse_args(["-S", "-1h", "-U", "-30m"])
    assert (args.since, args.until) == ("-1h", "-30m")
    with pytest.raises(SystemExit):  # a real option name is still an option
        parser.parse_args(["-S", "-U"])


def test_data_dir_on_group_and_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREMESH_DATA_DIR", "/from/env")
    group = argparse.ArgumentParser(parents=[data_dir_options()])
    sub = group.add_subparsers(dest="cmd")
    sub.add_parser("x", parents=[data_dir_options()])
    assert str(resolve_data_dir(group.parse_args(["x"]))) == "/from/env"
    assert str(resolve_data_dir(group.parse_args(["--data-dir", "/g", "x"]))) == "/g"
    assert str(resolve_data_dir(group.parse_args(["x", "--data-dir", "/s"]))) == "/s"
    monkeypatch.delenv("SECUREMESH_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg")
    assert str(resolve_data_dir(group.parse_args(["x"]))) == "/xdg/securemesh"


def test_formats() -> None:
    parser = argparse.ArgumentParser(parents=[format_options()])
    assert parser.parse_args([]).format == "table"
    assert parser.parse_args(["-o", "jsonl"]).format == "jsonl"
    docs = [{"a": 1, "b": "x y"}, {"a": 22, "b": None}]
    out = io.StringIO()
    print_records(docs, "jsonl", file=out)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == docs
    out = io.StringIO()
    print_records(docs, "json", file=out)
    assert json.loads(out.getvalue()) == docs
    out = io.StringIO()
    print_records(docs, "table", file=out)
    assert out.getvalue().splitlines() == ["A   B", "1   x y", "22  -"]
    out = io.StringIO()
    print_record({"size": 3, "note": "a\nb"}, "table", file=out)
    assert out.getvalue().splitlines() == ["size: 3", "note: a", "      b"]


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_waits_a_second_on_a_terminal() -> None:
    clock, out = _Clock(), _Tty()
    bar = Progress("verify", stream=out, clock=clock)
    bar(10, 100)
    clock.t += 0.5
    bar(20, 100)
    assert out.getvalue() == ""  # quick operations show nothing
    clock.t += 0.6
    bar(30, 100)
    assert "\r[#######" in out.getvalue()
    assert "verify: 30/100 entries (30%)" in out.getvalue()
    clock.t += 0.01
    bar(31, 100)  # throttled
    assert "31/100" not in out.getvalue()
    bar(100, 100)  # the last one always, and the line is ended
    assert out.getvalue().endswith("verify: 100/100 entries (100%)\n")


def test_progress_is_silent_off_a_terminal_unless_forced() -> None:
    clock, out = _Clock(), io.StringIO()
    quiet = Progress("verify", stream=out, clock=clock)
    clock.t += 10
    quiet(5, 10)
    quiet(10, 10)
    assert out.getvalue() == ""
    forced = Progress("verify", stream=out, clock=clock, force=True)
    forced(5, 10)
    clock.t += 0.2
    forced(6, 10)  # at most one line a second off a terminal
    forced(10, 10)
    assert out.getvalue().splitlines() == [
        "verify: 5/10 entries (50%)",
        "verify: 10/10 entries (100%)",
    ]


def test_cli_error_is_the_bare_message() -> None:
    assert CliError("no audit log at /x").diagnostics() == "no audit log at /x"
