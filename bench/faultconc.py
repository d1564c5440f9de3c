"""The concurrent part of bench/faults.py: two writers at once, and `index` under `serve`.

Each case runs real commands on a home made by bench/faults.py's World and counts errors
(tracebacks, failures other than a clean refusal, HTTP 5xx or refused connections), refusals
("another writer holds the home": not errors, the refused command is re-run after), rows lost,
and disagreements between the catalog and the index files (by `check` and read directly).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from faultlib import (
    TIMEOUT,
    TINY_MODEL,
    Child,
    check_problems,
    free_port,
    http_get,
    read_state,
    run_cli,
)

# The writers here commit one photo at a time (`--batch-size 1`, 640x480 photos), so that two
# runs started together are still at work when the other one starts writing.


def _outcome(run) -> str:
    if run.returncode == 0 and not run.crashed:
        return "ok"
    return "refused" if run.refused else "error"


def _writers_at_once(commands: list[list[object]]) -> dict:
    """Start `commands` together; re-run those refused (or failed cleanly) one at a time."""
    children = [Child(args) for args in commands]
    first = [child.wait(TIMEOUT) for child in children]
    outcomes = [_outcome(run) for run in first]
    reruns = [
        run_cli([str(a) for a in args], timeout=TIMEOUT) if outcome != "ok" else None
        for args, outcome in zip(commands, outcomes, strict=True)
    ]
    return {
        "first": [run.brief() for run in first],
        "outcomes": outcomes,
        "errors": sum(o == "error" for o in outcomes)
        + sum(r is not None and _outcome(r) != "ok" for r in reruns),
        "refusals": sum(o == "refused" for o in outcomes),
        "reruns": [r.brief() if r else None for r in reruns],
    }


def _settle(home: Path, expected: set[str], gone: tuple[str, ...]) -> dict:
    """Lost rows (expected paths without a tiny-model vector), rows that should be gone, and
    disagreements by `check` and by reading the home."""
    state = read_state(home)
    have = state.images_of(TINY_MODEL)
    check = run_cli(["check", "--home", home, "--json"], timeout=TIMEOUT)
    found = check_problems(check)
    return {
        "lost_rows": len(expected - have),
        "rows_not_removed": sum(1 for path in have if path.startswith(gone)) if gone else 0,
        "disagreements": int(bool(found) or bool(state.disagreements)),  # by check or read
        "actual": state.disagreements,
        "check": found,
        "check_crash": check.crashed,
    }


def _paths(folder: Path) -> set[str]:
    return {str(p) for p in sorted(folder.glob("*.jpg"))}


def two_indexes(world, *, existing: bool) -> dict:
    """`index c` and `index d` at once into a brand-new home or a copy of the template."""
    home = world.fresh_home() if existing else world.new_home()
    base = read_state(home).images_of(TINY_MODEL) if existing else set()
    options = world.index_options(home, batch=1)
    commands = [["index", folder, *options] for folder in (world.c, world.d)]
    result = _writers_at_once(commands)
    expected = set(base) | _paths(world.c) | _paths(world.d)
    result.update(_settle(home, expected, ()))
    shutil.rmtree(home, ignore_errors=True)
    return result


def index_while_remove(world) -> dict:
    """`index c` and `remove a/x` at once on a copy of the template."""
    home = world.fresh_home()
    base = read_state(home).images_of(TINY_MODEL)
    commands = [["index", world.c, *world.index_options(home, batch=1)],
                ["remove", world.a_x, "--home", home, "--json"]]
    result = _writers_at_once(commands)
    gone = (f"{world.a_x}/",)
    expected = {p for p in base if not p.startswith(gone)} | _paths(world.c)
    result.update(_settle(home, expected, gone))
    shutil.rmtree(home, ignore_errors=True)
    return result


def index_while_serving(world, *, max_requests: int, port: int) -> dict:
    """`serve` answers searches in a loop while `index c` runs; does it see the new photos?"""
    home = world.fresh_home()
    base = read_state(home).images_of(TINY_MODEL)
    server = Child(["serve", "--home", home, "--model", TINY_MODEL, "--port", port])
    url = f"http://127.0.0.1:{port}/api"
    started = time.perf_counter()
    while server.running() and time.perf_counter() - started < 180:
        if http_get(f"{url}/status", timeout=5)[0] == 200:
            break
        time.sleep(0.2)
    else:
        server.kill()
        run = server.wait(30)
        return {"errors": 1, "refusals": 0, "lost_rows": 0, "disagreements": 0,
                "serve_sees_new": False, "problem": "serve did not start",
                "serve_run": run.brief()}
    new = _paths(world.c)
    writer = Child(["index", world.c, *world.index_options(home, batch=1)])
    codes: dict[str, int] = {}
    requests = 0
    while (writer.running() or requests < 10) and requests < max_requests:
        path = "/search?q=a+red+boat&k=200" if requests % 2 else "/status"
        status, _ = http_get(url + path)
        codes[str(status)] = codes.get(str(status), 0) + 1
        requests += 1
        time.sleep(0.05)
    index_run = writer.wait(TIMEOUT)
    seen, waited = False, time.perf_counter()
    while time.perf_counter() - waited < 15 and not seen:  # a server may re-read periodically
        status, body = http_get(f"{url}/search?q=a+red+boat&k=200")
        codes[str(status)] = codes.get(str(status), 0) + 1
        seen = status == 200 and new <= {hit.get("path") for hit in (body or {}).get("hits", [])}
        time.sleep(0.5)
    server_alive = server.running()
    if server_alive:
        os.killpg(server.pid, signal.SIGINT)  # as Ctrl-C
    serve_run = server.wait(30)
    failures = sum(n for code, n in codes.items() if code == "0" or code.startswith("5"))
    result = {
        "requests": sum(codes.values()),
        "http_codes": codes,
        "index_run": index_run.brief(),
        "serve_run": serve_run.brief(),
        "serve_died": not server_alive,
        "errors": failures + int(_outcome(index_run) == "error") + int(serve_run.traceback)
        + int(not server_alive),
        "refusals": int(_outcome(index_run) == "refused"),
        "serve_sees_new": seen,
        "seconds_to_see": round(time.perf_counter() - waited, 1) if seen else None,
    }
    expected = set(base) | (new if _outcome(index_run) == "ok" else set())
    result.update(_settle(home, expected, ()))
    shutil.rmtree(home, ignore_errors=True)
    return result


def run_concurrent(world, rounds: int, max_requests: int) -> dict:
    cases: dict[str, list[dict]] = {"two_indexes_new_home": [], "two_indexes_existing_home": [],
                                    "index_while_remove": [], "index_while_serve": []}
    for number in range(rounds):
        cases["two_indexes_new_home"].append(two_indexes(world, existing=False))
        cases["two_indexes_existing_home"].append(two_indexes(world, existing=True))
        cases["index_while_remove"].append(index_while_remove(world))
        cases["index_while_serve"].append(
            index_while_serving(world, max_requests=max_requests, port=free_port())
        )
        print(f"  concurrent round {number + 1}/{rounds}: "
              + ", ".join(f"{k} {_case_line(v[-1])}" for k, v in cases.items()), flush=True)
    every = [r for results in cases.values() for r in results]
    serving = cases["index_while_serve"]
    return {
        "summary": {
            "rounds": rounds,
            "errors": sum(r["errors"] for r in every),
            "refusals": sum(r["refusals"] for r in every),
            "lost_rows": sum(r["lost_rows"] for r in every),
            "rows_not_removed": sum(r.get("rows_not_removed", 0) for r in every),
            "disagreements": sum(r["disagreements"] for r in every),
            "serve_misses_new_photos": sum(not r["serve_sees_new"] for r in serving),
        },
        "cases": cases,
    }


def _case_line(result: dict) -> str:
    return (f"[errors {result['errors']}, refused {result['refusals']}, lost "
            f"{result['lost_rows']}, disagree {result['disagreements']}]")
