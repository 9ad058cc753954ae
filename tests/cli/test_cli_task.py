"""``securemesh task submit --object``: the parser and its validation (in-process; the
submission itself over stored objects is ``submit_over_objects``, tested on real daemons
in tests/tasks/test_tasks_objects_daemons.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from securemesh.cli import build_parser, main


def test_submit_parses_repeated_objects_and_the_index() -> None:
    args = build_parser().parse_args(
        ["task", "submit", "demo.sum", "--to", "cloud-1", "--object", "a/b.bin",
         "--object", "c", "--index", "cloud-1", "--timeout", "5"]
    )  # fmt: skip
    assert args.object == ["a/b.bin", "c"]
    assert args.index == "cloud-1"
    assert args.timeout == 5.0
    plain = build_parser().parse_args(["task", "submit", "demo.sum", "--to", "cloud-1"])
    assert plain.object == []
    assert plain.index is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--object", "x"], "--object needs the index node"),
        (["--object", "x", "--object", "x", "--index", "c"], "names an object twice"),
        (["--object", "bad name", "--index", "c"], "is not an object name"),
        (["--object", "x" * 256, "--index", "c"], "is not an object name"),
        (["--object", "x", "--index", "c", "--timeout", "0"], "--timeout is in"),
    ],
)
def test_submit_object_mistakes_are_one_error_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["task", "submit", "demo.sum", "--to", "cloud-1",
                 "--data-dir", str(tmp_path), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
