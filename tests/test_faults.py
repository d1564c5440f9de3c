"""A few fast trials of the fault bench (bench/faults.py), each asserting the bench's goals.

Every trial runs the real `searchengine` CLI in child processes, kills or races it for real, and
measures the home it leaves by reading the catalog and the index files directly. The full bench
(100 kill trials, a 300-file corpus, several concurrency rounds) is `python bench/faults.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import faultconc  # noqa: E402
import faulthostile  # noqa: E402
import faults  # noqa: E402
from faultcorpus import remove_tree  # noqa: E402
from faultlib import free_port  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> faults.World:
    """Photos, caption files and a template home (built in this process, to save a start-up)."""
    return faults.World(tmp_path_factory.mktemp("faults"), quick=True, in_process=True)


def _killed_trial(world: faults.World, command: str, following: str) -> dict:
    """A trial killed while it saves an index file; the window is a few milliseconds, so a
    run that finished before the kill landed is tried again (twice at most)."""
    for _ in range(3):
        trial = faults.kill_trial(
            world, command, moment="save", delay=0.0, following=following
        )
        if trial["killed"]:
            return trial
    pytest.fail(f"`{command}` finished three times before its index save could be caught")


def _assert_recovered(trial: dict) -> None:
    assert not trial["crash"], trial["next_run"]
    assert trial["check_after_next"] == []
    assert trial["actual_after_next"] == []
    assert trial["lost_images"] == trial["lost_texts"] == 0
    assert trial["temp_files"] == []
    assert not trial["unfinished"]


def test_remove_killed_while_saving_is_repaired_by_remove_again(world: faults.World) -> None:
    """Issue 13 #10: the catalog forgot the files, the index file still holds them, and running
    `remove` again must leave both in agreement, with no temporary file left behind."""
    _assert_recovered(_killed_trial(world, "remove", "remove"))


def test_index_killed_while_saving_then_another_writer(world: faults.World) -> None:
    """Committed batches survive a kill of `index`, whichever writer comes next."""
    _assert_recovered(_killed_trial(world, "index", "add-texts"))


def test_hostile_corpus_is_indexed_without_crash(tmp_path: Path) -> None:
    """Issue 13 #7, #8, #13, #17: a small hostile corpus (truncations, bombs, extreme aspect
    ratios, odd modes, device links, loops, dangling links, non-UTF-8 and 255-byte names, a
    folder 1,100 levels deep): no crash, bounded memory, every bad file listed with a reason,
    every good one indexed."""
    try:
        result = faulthostile.run_hostile(
            tmp_path, cuts=4, good=6, flickr=0, workers=0, memory_cap_mb=4096,
            memory_margin_mb=512, per_family=False,
        )
    finally:
        remove_tree(tmp_path / "corpus")  # too deep for pytest's own clean-up
    failed = {name: result[name] for name in faults.GOALS["hostile"] if result[name]}
    assert not failed, (failed, result["index_run"], result["examples"])
    assert result["good_indexed"] == result["good"]


def test_two_indexes_into_a_new_home(world: faults.World) -> None:
    """Issue 13 #9: two `index` runs started together on a brand-new home: no error (a clean
    refusal is allowed, and the refused run is repeated), no lost row, index and catalog agree.

    Without exclusion between writers this is a race (it shows when the two runs overlap, which
    they did in about half of the runs before the fix); with it, it must pass every time."""
    result = faultconc.two_indexes(world, existing=False)
    assert result["errors"] == 0, (result["first"], result["reruns"])
    assert result["lost_rows"] == 0
    assert result["disagreements"] == 0, (result["actual"], result["check"])


def test_serve_sees_what_index_adds(world: faults.World) -> None:
    """Issue 13 #11: `serve` answers throughout an `index` run and finds its new photos."""
    result = faultconc.index_while_serving(world, max_requests=60, port=free_port())
    assert result["errors"] == 0, (result["http_codes"], result["index_run"], result["serve_run"])
    assert result["lost_rows"] == 0 and result["disagreements"] == 0
    assert result["serve_sees_new"]
