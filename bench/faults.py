"""Fault bench: crashes, hostile files and concurrent writers against the real CLI.

Three parts, each run on generated photos (and Flickr photos when ../shared/data has them):

1. kill: SIGKILL `index`, `remove`, `add-texts` and `use-model` at random moments (seeded: a
   random delay after the command's first write to the home, or the instant an index file is
   being saved), then run the next command (the same again, or another writer), then
   `check --json`. Counts: disagreements between catalog and index files after the next command
   (by `check` and by reading both directly), rows committed before the kill and gone after it,
   `*.tmp` files left in the home, and commands that did not finish their job when re-run.
2. hostile: `index` over a corpus of malformed and odd files: crashes, peak memory, bad files not
   listed as skipped with a reason, good files not indexed.
3. concurrent: two `index` runs at once (new home, existing home), `index` while `remove`,
   `index` while `serve` answers queries: errors, refusals, lost rows, whether serve sees the
   new photos.

Goals: every count named in GOALS is 0. Nothing is written to the repository unless asked:

    .venv/bin/python bench/faults.py [--quick] [--trials 100] [--seed 0] [--record]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from faultconc import run_concurrent  # noqa: E402
from faultcorpus import (  # noqa: E402
    remove_tree,
    write_photos,
    write_texts,
)
from faulthostile import run_hostile  # noqa: E402
from faultlib import (  # noqa: E402
    REPAIR_HINT,
    SECOND_MODEL,
    TIMEOUT,
    TINY_MODEL,
    Child,
    HomeState,
    check_problems,
    kill_at,
    read_state,
    run_cli,
    watch,
)

COMMANDS = ("index", "remove", "add-texts", "use-model")
GOALS = {
    "kill": ("disagreements", "disagreements_actual", "lost_rows", "trials_with_temp_files",
             "unfinished", "crashes"),
    "hostile": ("crashes", "bad_unlisted", "either_unaccounted", "good_missing",
                "memory_over_bound"),
    "concurrent": ("errors", "lost_rows", "disagreements", "serve_misses_new_photos"),
}


class World:
    """Photos, caption files and a template home that every trial copies.

    photos/a/x and photos/a/y are indexed in the template with the tiny model and the second
    one, photos/b is not; texts/captions.csv is the template's text set, texts/more.csv is not.
    """

    def __init__(self, root: Path, *, quick: bool, in_process: bool = False):
        self.root = root
        size = 6 if quick else 12
        self.a, self.a_x, self.a_y = root / "photos/a", root / "photos/a/x", root / "photos/a/y"
        self.b, self.c, self.d = root / "photos/b", root / "photos/c", root / "photos/d"
        write_photos(self.a_x, size, seed=0)
        write_photos(self.a_y, size, seed=100)
        write_photos(self.b, 2 * size, seed=200)
        for seed, folder in ((300, self.c), (400, self.d)):  # enough work for two runs to overlap
            write_photos(folder, 120 if quick else 150, seed=seed, size=(640, 480))
        (root / "texts").mkdir()
        self.captions, self.more = root / "texts/captions.csv", root / "texts/more.csv"
        write_texts(self.captions, 20, seed=0)
        write_texts(self.more, 128 if quick else 256, seed=1)
        self.template = root / "template"
        (self._build_template_in_process if in_process else self._build_template)()
        self.homes = 0

    def _build_template(self) -> None:
        steps = [
            ["index", self.a, *self.index_options(self.template)],
            ["index", self.a, *self.index_options(self.template, SECOND_MODEL)],
            ["add-texts", self.captions, "--set", "captions", "--home", self.template],
        ]
        for args in steps:
            run = run_cli(args, timeout=TIMEOUT)
            if run.returncode != 0:
                raise SystemExit(f"building the template home failed: {run.message}")

    def _build_template_in_process(self) -> None:
        """The same template through the library in this process (faster where torch is
        already loaded, as in the test suite)."""
        from searchengine.engine import Engine
        from searchengine.settings import IngestSettings

        settings = IngestSettings(workers=0, batch_size=4)
        with Engine.open(self.template) as engine:
            engine.index([self.a], model=TINY_MODEL, settings=settings)
            engine.index([self.a], model=SECOND_MODEL, settings=settings)
            engine.add_texts(self.captions, column="caption", text_set="captions")

    @staticmethod
    def index_options(home: Path, model: str = TINY_MODEL, batch: int = 4) -> list[object]:
        return ["--home", home, "--model", model, "--workers", 0, "--batch-size", batch, "--json"]

    def new_home(self) -> Path:
        """A path for a home that does not exist yet."""
        self.homes += 1
        return self.root / f"home-{self.homes:04d}"

    def fresh_home(self) -> Path:
        """A private copy of the template home."""
        self.homes += 1
        home = self.root / f"home-{self.homes:04d}"
        shutil.copytree(self.template, home, symlinks=True)
        return home

    def args(self, command: str, home: Path) -> list[object]:
        """The writer `command` as the kill trials run it on `home`."""
        if command == "index":
            return ["index", self.a, self.b, *self.index_options(home)]
        if command == "remove":
            return ["remove", self.a_x, "--home", home, "--json"]
        if command == "add-texts":
            return ["add-texts", self.more, "--set", "more", "--home", home, "--json"]
        return ["use-model", SECOND_MODEL, "--home", home]

    def removed_by(self, commands: set[str]) -> tuple[str, ...]:
        """Path prefixes whose rows the commands are meant to delete."""
        return (f"{self.a_x}/",) if "remove" in commands else ()


# -- 1. kill trials ----------------------------------------------------------------------------


def baselines(world: World, commands: tuple[str, ...] = COMMANDS) -> dict[str, dict]:
    """Each command run to the end on a template copy: its timeline and the state it leaves."""
    out = {}
    for command in commands:
        home = world.fresh_home()
        run, timeline = watch(Child(world.args(command, home)), home, TIMEOUT)
        state = read_state(home)
        out[command] = {
            "run": run.brief(),
            "first_write_s": timeline.first_write,
            "exit_s": round(run.seconds, 2),
            "state": state,
            "disagreements": state.disagreements,
        }
        shutil.rmtree(home)
    return out


def kill_trial(world: World, command: str, *, moment: str, delay: float, following: str,
               base: dict | None = None) -> dict:
    """Kill one run of `command` (see `kill_at` for `moment` and `delay`), run `following`, and
    measure what is left. `base` (from `baselines`) is the state a run to the end leaves; with
    it, a `following` equal to `command` must leave that state ("unfinished" otherwise)."""
    home = world.fresh_home()
    child = Child(world.args(command, home))
    killed = kill_at(child, home, moment=moment, delay=delay, timeout=TIMEOUT)
    child.wait(TIMEOUT)
    at_kill = read_state(home)
    check_kill = run_cli(["check", "--home", home, "--json"], timeout=TIMEOUT)
    next_run = run_cli(world.args(following, home), timeout=TIMEOUT)
    after = read_state(home)
    check_after = run_cli(["check", "--home", home, "--json"], timeout=TIMEOUT)
    removed = world.removed_by({command, following})
    lost_images = {
        row for row in at_kill.images - after.images if not row[0].startswith(removed)
    }
    lost_texts = at_kill.texts - after.texts
    unfinished = following == command and base is not None and _differs(after, base["state"])
    found_after = check_problems(check_after)
    shutil.rmtree(home)
    return {
        "command": command,
        "moment": moment,
        "delay_s": round(delay, 3),
        "killed": killed,
        "next": following,
        "next_run": next_run.brief(),
        "check_after_kill": check_problems(check_kill),
        "check_after_kill_names_repair": bool(REPAIR_HINT.search(check_kill.stdout
                                                                  + check_kill.stderr)),
        "actual_after_kill": at_kill.disagreements,
        "check_after_next": found_after,
        "actual_after_next": after.disagreements,
        "lost_images": len(lost_images),
        "lost_texts": len(lost_texts),
        "temp_files": after.temp_files,
        "unfinished": unfinished,
        "crash": next_run.crashed or check_after.crashed or check_kill.crashed,
    }


def _differs(after: HomeState, expected: HomeState) -> bool:
    return (after.images, after.texts, after.default_model) != (
        expected.images, expected.texts, expected.default_model
    )


def kill_summary(trials: list[dict]) -> dict:
    killed = [t for t in trials if t["killed"]]
    after_kill_bad = [t for t in killed if t["check_after_kill"]]
    return {
        "trials": len(trials),
        "killed_while_running": len(killed),
        "disagreements": sum(bool(t["check_after_next"]) for t in trials),
        "disagreements_actual": sum(bool(t["actual_after_next"]) for t in trials),
        "lost_rows": sum(t["lost_images"] + t["lost_texts"] for t in trials),
        "trials_losing_rows": sum(bool(t["lost_images"] + t["lost_texts"]) for t in trials),
        "trials_with_temp_files": sum(bool(t["temp_files"]) for t in trials),
        "unfinished": sum(t["unfinished"] for t in trials),
        "crashes": sum(t["crash"] for t in trials),
        "after_kill_check_disagrees": len(after_kill_bad),
        "after_kill_actual_disagrees": sum(bool(t["actual_after_kill"]) for t in killed),
        "after_kill_check_names_repair": sum(t["check_after_kill_names_repair"]
                                             for t in after_kill_bad),
    }


def run_kills(world: World, trials: int, seed: int, save_share: float = 0.25) -> dict:
    rng = random.Random(seed)
    base = baselines(world)
    results = []
    for number in range(trials):
        command = COMMANDS[number % len(COMMANDS)]
        moment = "save" if command != "use-model" and rng.random() < save_share else "random"
        timeline = base[command]
        # The baseline's time from first write to exit; a little less, so that a run a bit
        # faster than the baseline is still caught running most of the time.
        window = 0.85 * max(0.05, timeline["exit_s"] - (timeline["first_write_s"] or 0.0))
        following = rng.choice([c for c in COMMANDS if c != command])
        following = command if rng.random() < 0.7 else following
        results.append(kill_trial(world, command, moment=moment, delay=rng.uniform(0, window),
                                  following=following, base=base[command]))
        print(f"  kill {number + 1}/{trials} {command}: {_trial_line(results[-1])}", flush=True)
    per_command = {c: kill_summary([t for t in results if t["command"] == c]) for c in COMMANDS}
    return {
        "summary": kill_summary(results),
        "per_command": per_command,
        "baselines": {
            c: {k: v for k, v in b.items() if k != "state"} for c, b in base.items()
        },
        "trials": results,
    }


def _trial_line(trial: dict) -> str:
    flags = [trial["moment"], "killed" if trial["killed"] else "finished first",
             f"next {trial['next']}"]
    if trial["check_after_next"] or trial["actual_after_next"]:
        flags.append("DISAGREE")
    if trial["lost_images"] or trial["lost_texts"]:
        flags.append(f"LOST {trial['lost_images'] + trial['lost_texts']}")
    if trial["temp_files"]:
        flags.append(f"TMP {len(trial['temp_files'])}")
    if trial["unfinished"]:
        flags.append("UNFINISHED")
    if trial["crash"]:
        flags.append("CRASH")
    return ", ".join(flags)


# -- the program -------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, root: Path) -> dict:
    """Every part asked for, in a scratch folder `root`; the figures as one dict."""
    results: dict = {"options": {k: str(v) if isinstance(v, Path) else v
                                 for k, v in vars(args).items() if k != "record"}}
    parts = set(args.parts.split(","))
    started = time.perf_counter()
    if parts & {"kill", "concurrent"}:
        world = World(root / "world", quick=args.quick)
    if "kill" in parts:
        print(f"kill trials: {args.trials}", flush=True)
        results["kill"] = run_kills(world, args.trials, args.seed)
    if "hostile" in parts:
        print("hostile corpus", flush=True)
        results["hostile"] = run_hostile(
            root / "hostile", cuts=args.cuts, good=args.good, flickr=args.flickr,
            workers=args.workers, memory_cap_mb=args.memory_cap_mb,
            memory_margin_mb=args.memory_margin_mb, per_family=args.per_family,
        )
    if "concurrent" in parts:
        print(f"concurrent rounds: {args.rounds}", flush=True)
        results["concurrent"] = run_concurrent(world, args.rounds, args.max_requests)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def failures(results: dict) -> dict[str, int]:
    """The goal figures that are not 0, as "part.figure" -> value."""
    failed = {}
    for part, names in GOALS.items():
        figures = results.get(part, {})
        figures = figures.get("summary", figures)
        for name in names:
            if name in figures and figures[name]:
                failed[f"{part}.{name}"] = figures[name]
    return failed


def print_summary(results: dict) -> None:
    rows = []
    for part, names in GOALS.items():
        if part not in results:
            continue
        figures = results[part].get("summary", results[part])
        informational = [k for k, v in figures.items() if k not in names and isinstance(v, int)
                         and not isinstance(v, bool)]
        rows += [(part, name, figures.get(name), "0") for name in names]
        rows += [(part, name, figures[name], "") for name in informational]
    if "hostile" in results:
        hostile = results["hostile"]
        for name in ("peak_rss_mb", "reference_peak_rss_mb", "seconds"):
            rows.append(("hostile", name, hostile[name], ""))
    width = max(len(r[1]) for r in rows) if rows else 10
    print(f"\n{'part':<11}{'figure':<{width + 2}}{'value':>10}  goal")
    for part, name, value, goal in rows:
        mark = " <-" if goal == "0" and value else ""
        print(f"{part:<11}{name:<{width + 2}}{value!s:>10}  {goal}{mark}")
    if "kill" in results:
        print("\nkill trials per command (trials / killed / disagree / lost / tmp / unfinished):")
        for command, s in results["kill"]["per_command"].items():
            print(f"  {command:<10} {s['trials']} / {s['killed_while_running']} / "
                  f"{s['disagreements']} / {s['lost_rows']} / {s['trials_with_temp_files']} / "
                  f"{s['unfinished']}")
    print(f"\n{len(failures(results))} goal figures above 0; {results['seconds']} s in all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="~10 kill trials, a ~60-file corpus, one concurrency round")
    parser.add_argument("--trials", type=int, default=None, help="kill trials [100; quick 12]")
    parser.add_argument("--rounds", type=int, default=None, help="concurrency rounds [2; quick 1]")
    parser.add_argument("--cuts", type=int, default=None,
                        help="truncation points per format [60; quick 6]")
    parser.add_argument("--good", type=int, default=None, help="ordinary photos [50; quick 10]")
    parser.add_argument("--flickr", type=int, default=None,
                        help="real photos from flickr8k-1k, when present [20; quick 0]")
    parser.add_argument("--workers", type=int, default=None,
                        help="decode workers of the hostile `index` [2; quick 0]")
    parser.add_argument("--memory-cap-mb", type=float, default=4096,
                        help="kill the hostile `index` past this resident size (counted a crash)")
    parser.add_argument("--memory-margin-mb", type=float, default=512,
                        help="goal: the hostile `index` peaks at most this far above an `index` "
                        "of the ordinary photos alone")
    parser.add_argument("--per-family", action=argparse.BooleanOptionalAction, default=None,
                        help="also index each hostile family on its own [full: yes; quick: no]")
    parser.add_argument("--max-requests", type=int, default=400,
                        help="HTTP requests per index-while-serve case, at most")
    parser.add_argument("--parts", default="kill,hostile,concurrent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/faults.json (the checkout is untouched without)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the JSON to this file (anywhere)")
    parser.add_argument("--result", default=None,
                        help="write bench/results/<RESULT>.json instead (implies --record)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"trials": (100, 12), "rounds": (2, 1), "cuts": (60, 6), "good": (50, 10),
                "flickr": (20, 0), "workers": (2, 0), "per_family": (True, False)}
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    return args


def main() -> int:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="searchengine-faults-"))
    try:
        results = run_all(args, root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            remove_tree(root)
    results["failures"] = failures(results)
    print_summary(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.record or args.result:
        write_result(args.result or "faults", results)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
