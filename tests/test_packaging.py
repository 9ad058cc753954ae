"""The wheel ships ``securemesh`` and its three root-level subpackages under it,
and never a top-level ``crypto``, ``storage`` or ``audit`` (ARCHITECTURE.md §1)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        cwd=out,
    )
    (built,) = out.glob("securemesh-*.whl")
    return built


def test_wheel_has_no_top_level_crypto_storage_audit(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops <= {"securemesh", *(t for t in tops if t.endswith(".dist-info"))}
    for sub in ("crypto", "storage", "audit"):
        assert f"securemesh/{sub}/__init__.py" in names
    assert "securemesh/py.typed" in names


def test_installed_wheel_imports_from_outside_the_repo(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run([*pip, "--target", str(target), str(wheel)], check=True)
    assert not any((target / name).exists() for name in ("crypto", "storage", "audit"))
    code = (
        "import securemesh, securemesh.crypto, securemesh.storage, securemesh.audit;"
        "print(securemesh.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.strip().startswith(str(target))
