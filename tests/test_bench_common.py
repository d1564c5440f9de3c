"""bench/common.py's `cli_from`: a bench's "before" run imports the tree it names, not the
checkout it is started from."""

from __future__ import annotations

import ast
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


def _unguarded_writes(tree: ast.Module) -> list[int]:
    """Lines of calls that write under bench/results/ (`write_result(...)`, or any call given
    `RESULTS`) and that run without `--record`: not inside an `if` on `record`, nor after an
    `if not args.record: return`."""
    found: list[int] = []

    def writes(node: ast.AST) -> list[int]:
        return [call.lineno for call in ast.walk(node) if isinstance(call, ast.Call) and (
            (isinstance(call.func, ast.Name) and call.func.id == "write_result")
            or any(isinstance(n, ast.Name) and n.id == "RESULTS" for a in call.args
                   for n in ast.walk(a)))]

    def on_record(test: ast.expr) -> bool:
        return any(isinstance(n, ast.Attribute) and n.attr == "record" for n in ast.walk(test))

    def visit(body: list[ast.stmt]) -> None:
        for statement in body:
            if isinstance(statement, ast.If) and on_record(statement.test):
                if isinstance(statement.test, ast.UnaryOp) and any(
                        isinstance(s, ast.Return) for s in statement.body):
                    return  # `if not args.record: return`: what follows is guarded
                continue  # `if args.record: ...`: its body is guarded
            if isinstance(statement, ast.FunctionDef | ast.If | ast.For | ast.While | ast.With
                          | ast.Try):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(statement, field, []) or [])
                for handler in getattr(statement, "handlers", []):
                    visit(handler.body)
                if isinstance(statement, ast.If | ast.While):
                    found.extend(writes(statement.test))
                continue
            found.extend(writes(statement))

    visit(tree.body)
    return found


def test_a_bench_writes_its_results_only_when_asked_to_record() -> None:
    """A user's run of a bench program leaves the checkout clean: bench/results/ is written
    only under `--record`."""
    unguarded = {path.name: lines for path in sorted((REPO / "bench").glob("*.py"))
                 if path.name != "common.py"
                 and (lines := _unguarded_writes(ast.parse(path.read_text())))}
    assert not unguarded, f"writes to bench/results/ without --record: {unguarded}"


def test_the_record_check_sees_an_unguarded_write() -> None:
    guarded = ("def main(args):\n    if not args.record:\n        return\n"
               "    write_result('x', {})\n")
    inside = "def main(args):\n    if args.record:\n        write_result('x', {})\n"
    loose = "def main(args):\n    for r in rows:\n        shutil.copy(a, RESULTS / 'x.png')\n"
    assert _unguarded_writes(ast.parse(guarded)) == []
    assert _unguarded_writes(ast.parse(inside)) == []
    assert _unguarded_writes(ast.parse(loose)) == [3]
