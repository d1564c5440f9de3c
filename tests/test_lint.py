"""The tree stays ruff-clean and the library mypy-clean (the rules are in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        found = shutil.which("ruff")
        if found is None:
            pytest.skip("ruff is not installed (it is in the dev extra)")
        ruff = Path(found)
    result = subprocess.run(
        [str(ruff), "check", "searchengine", "tests", "bench", "migrations"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing():
    """The library type-checks (settings in pyproject.toml's [tool.mypy]; cache in .mypy_cache)."""
    pytest.importorskip("mypy", reason="mypy is not installed (it is in the dev extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_data_pattern_names_a_file():
    """pyproject's package-data promises files (py.typed, configs, weights): each must exist."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = setuptools.get("package-dir", {})
    for package, patterns in setuptools["package-data"].items():
        folder = ROOT / folders.get(package, package.replace(".", "/"))
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: nothing matches {pattern!r}"
