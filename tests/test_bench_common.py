"""bench/common.py's `cli_from`: a bench's "before" run imports the tree it names, not the
checkout it is started from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import cli_from, imported_from  # noqa: E402


@pytest.fixture()
def other_tree(tmp_path: Path) -> Path:
    """A source tree whose `searchengine` CLI only says it ran (another commit's stand-in)."""
    package = tmp_path / "tree" / "searchengine"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text("def cli():\n    print('the other tree')\n    return 0\n")
    return tmp_path / "tree"


def test_a_run_from_the_checkout_root_imports_the_tree_it_names(other_tree: Path) -> None:
    command, env = cli_from(other_tree)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "the other tree"
    assert imported_from(done.stderr, other_tree).is_relative_to(other_tree.resolve())
    # the trap the helper avoids: `python -c` with PYTHONPATH alone, from the checkout's root
    naive = subprocess.run(
        [sys.executable, "-c", "import searchengine; print(searchengine.__file__)"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert Path(naive.stdout.strip()).is_relative_to(REPO)


def test_a_run_that_imported_another_tree_stops_the_bench(other_tree: Path) -> None:
    command, env = cli_from()  # this checkout
    done = subprocess.run([*command, "--version"], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    assert imported_from(done.stderr).is_relative_to(REPO)
    with pytest.raises(SystemExit, match="imported"):
        imported_from(done.stderr, other_tree)
