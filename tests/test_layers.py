"""The import-linter contracts in pyproject.toml hold, cover every private module, and bite.

``.ci/run`` runs ``lint-imports`` after mypy; these tests run it too, so a broken
arrow fails the suite that developers run locally, and they check that the
contracts are not vacuous: a planted upward import and a planted private import
in a copy of the package each break the matching contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "securemesh"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    return {c["id"]: c for c in contracts}


def _private_modules() -> set[str]:
    """``securemesh.<pkg>....<_name>``: every private module below a top-level package."""
    found: set[str] = set()
    paths = [
        Path(d, f)
        for d, _, files in os.walk(PACKAGE, followlinks=True)  # crypto/audit/storage are symlinks
        for f in files
        if f.endswith(".py")
    ]
    for path in paths:
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") and not p.startswith("__") for p in parts[2:]):
            found.add(".".join(parts))
    return found


def _lint(cwd: Path, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(cwd / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_contracts_are_kept() -> None:
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_every_private_module_is_forbidden_to_other_packages() -> None:
    forbidden = set(_contracts()["private-modules"]["forbidden_modules"])  # type: ignore[arg-type]
    missing = _private_modules() - forbidden
    assert not missing, f"add to the private-modules contract in pyproject.toml: {sorted(missing)}"
    assert not forbidden - _private_modules(), "the contract names modules that do not exist"


def test_layer_table_in_the_docs_matches_the_contract() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for layer in _contracts()["layers"]["layers"]:  # type: ignore[attr-defined]
        for module in layer.replace("|", ":").split(":"):
            name = module.strip()
            assert f"`{name}`" in doc, f"docs/architecture.md does not place {name}"


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        # a lower layer reaching up: wire must not know about the node
        ("wire/_limits.py", "import securemesh.node", "Layers:"),
        # the crypto layer must not import services, even lazily in a function
        ("crypto/z85.py", "def _f() -> None:\n    import securemesh.enroll", "Layers:"),
        # another package's private module, even from a higher layer
        ("sdk/_message.py", "import securemesh.enroll._store", "private modules"),
        # ZeroMQ outside the transport seam
        ("node/_attach.py", "import zmq", "ZeroMQ"),
    ],
)
def test_a_planted_violation_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, contract: str
) -> None:
    # A copy of the package (symlinked subpackages resolved) with one bad import.
    shutil.copytree(PACKAGE, tmp_path / "securemesh", symlinks=False)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "securemesh" / module
    target.write_text(target.read_text() + "\n" + planted + "\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = _lint(tmp_path, env=env)
    assert out.returncode != 0, out.stdout
    broken = [line for line in out.stdout.splitlines() if " BROKEN" in line]
    assert len(broken) == 1, out.stdout
    assert contract in broken[0]
