"""`searchengine tune` on flickr8k-1k, each stage timed, while a live `serve` answers searches.

Indexes the data set's images into a fresh home with a small model (se-tiny, random weights by
default: the "current" model), starts the real `searchengine serve` on that home (following the
home's default model, as it does without --model), and keeps `--clients` threads searching it
in a loop. Then runs the real `searchengine tune` on the `train` split with the `test` split held
out (200 images, 1,000 captions): train, compare, re-embed the home's whole collection, switch.
Prints the stages' times and both models' recall, and what the clients saw: requests during the
tune, errors, the slowest request, and the moment the serve's answers turned to the new model.

    .venv/bin/python bench/tune.py [--steps 60] [--images 1000] [--record]

Writes bench/results/tune.json only with --record. Quote `uptime` beside the figures: on a
shared host they move with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    SHARED_DATA,
    cli_from,
    imported_from,
    percentiles,
    require_flickr,
    write_result,
)

DATA = SHARED_DATA / "flickr8k-1k"
CLI = [sys.executable, "-c", "from searchengine.cli import cli; cli()"]
QUERIES = ("a dog runs on the grass", "two children playing in the water", "a man on a bike",
           "people walking in a city street", "a brown dog with a ball")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="se-tiny/random", help="the home's current model")
    parser.add_argument("--images", type=int, default=1000, help="photos in the home (<= 1000)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--workers", type=int, default=1, help="training decode workers")
    parser.add_argument("--min-gain", type=float, default=0.01)
    parser.add_argument("--switch", default="auto", choices=("auto", "never", "always"))
    parser.add_argument("--clients", type=int, default=2, help="search threads on the serve")
    parser.add_argument("--work", type=Path, default=Path("/tmp/searchengine-bench-tune"))
    parser.add_argument("--switch-only", metavar="SPEC", default=None,
                        help="no tune: index the photos with SPEC too, then `use-model SPEC` "
                        "while the serve answers (the switch alone, e.g. for a larger model)")
    parser.add_argument("--serve-code", metavar="REV", default=None,
                        help="run the serve from git revision REV (a before/after comparison)")
    parser.add_argument("--record", action="store_true", help="write bench/results/tune.json")
    args = parser.parse_args()
    require_flickr()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    home, load = args.work / "home", {"before": _uptime()}
    index_seconds = index_home(args, home)
    if args.switch_only is not None:
        subprocess.run([*CLI, "index", str(args.work / "photos"), "--home", str(home), "--model",
                        args.switch_only], check=True, stdout=subprocess.DEVNULL)
    code = None
    if args.serve_code is not None:
        from serve import checkout

        code = checkout(args.serve_code, Path(tempfile.mkdtemp(dir=args.work)))
    server, port = start_server(home, args.work / "serve.log", code)
    clients = Clients(f"http://127.0.0.1:{port}", args.clients)
    try:
        clients.start()
        time.sleep(10.0)  # the steady state before the tune starts
        tune_start = time.monotonic()
        report = run_tune(args, home) if args.switch_only is None else use_model(args, home)
        tune_end = time.monotonic()
        new = report["candidate"]["model"] if report["decision"]["switched"] else None
        clients.wait_for(new, timeout=60.0)
    finally:
        clients.stop()
        server.terminate()
        server.wait(timeout=30)
    load["after"] = _uptime()
    figures = {
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "load": load,
        "index_seconds": index_seconds,
        "tune": report,
        "serve": clients.figures(tune_start, tune_end, new, report["timings"]),
    }
    show(figures)
    if args.record:
        write_result("tune", figures)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def index_home(args, home: Path) -> float:
    """The home's collection: the data set's first `--images` photos, indexed with --model."""
    photos = args.work / "photos"
    photos.mkdir()
    for path in sorted((DATA / "images").iterdir())[: args.images]:
        os.link(path, photos / path.name) if _same_device(path, photos) else shutil.copy(
            path, photos / path.name)
    start = time.perf_counter()
    subprocess.run([*CLI, "index", str(photos), "--home", str(home), "--model", args.model],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _same_device(path: Path, folder: Path) -> bool:
    return path.stat().st_dev == folder.stat().st_dev


def start_server(home: Path, log: Path, code: Path | None) -> tuple[subprocess.Popen, int]:
    """`searchengine serve` (of the package under `code`, else this one) on a free port,
    following the home's default model."""
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cli, env = cli_from(code)
    process = subprocess.Popen([*cli, "serve", "--home", str(home), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                               env={**env, "SEARCHENGINE_TOKEN": ""})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).status_code == 200:
                imported_from(log.read_text(errors="replace"), code)
                return process, port
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("serve did not answer within 300 s")


def run_tune(args, home: Path) -> dict:
    command = [*CLI, "tune", str(DATA), "--home", str(home), "--split", "train",
               "--val-split", "test", "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--lr", str(args.lr), "--workers", str(args.workers),
               "--eval-every", str(10 * args.steps), "--min-gain", str(args.min_gain),
               "--switch", args.switch, "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tune failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def use_model(args, home: Path) -> dict:
    """`searchengine use-model SPEC` in its own process, shaped as tune's report."""
    start = time.perf_counter()
    done = subprocess.run([*CLI, "use-model", args.switch_only, "--home", str(home)],
                          capture_output=True, text=True, check=True)
    model = done.stdout.strip().removeprefix("default model: ")
    return {"decision": {"switched": True, "reason": f"use-model {model}"},
            "candidate": {"model": model},
            "timings": {"switch": time.perf_counter() - start}}


class Clients:
    """Threads that search the serve in a loop and record (start, seconds, status, model)."""

    def __init__(self, base: str, count: int):
        self.base, self.count = base, count
        self.records: list[list[tuple[float, float, int, str]]] = [[] for _ in range(count)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _run(self, number: int) -> None:
        import httpx

        with httpx.Client(base_url=self.base, timeout=120) as client:
            i = number
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    response = client.get("/api/search", params={
                        "q": QUERIES[i % len(QUERIES)], "limit": 10})
                    status = response.status_code
                    model = response.json().get("model", "") if status == 200 else response.text
                except httpx.TransportError as error:
                    status, model = 0, str(error)
                self.records[number].append((start, time.monotonic() - start, status, model))
                i += 1

    def wait_for(self, model: str | None, *, timeout: float) -> None:
        """Until every client's last answer came from `model` (None: just a few more)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lasts = [log[-1][3] for log in self.records if log]
            if model is None or (len(lasts) == self.count and set(lasts) == {model}):
                break
            time.sleep(0.1)
        time.sleep(1.0)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def figures(self, tune_start: float, tune_end: float, new: str | None,
                timings: dict) -> dict:
        every = sorted(r for log in self.records for r in log)
        before = [r for r in every if r[0] < tune_start]
        during = [r for r in every if tune_start <= r[0] <= tune_end]
        errors = [r for r in every if r[2] != 200]
        switched_at = next((r[0] + r[1] for r in every if new and r[3] == new), None)
        near = ([r for r in every if abs(r[0] - switched_at) <= 10.0]
                if switched_at is not None else [])
        # the re-embedding and the switch: the seconds tune reports, ending where the serve's
        # answers turned (the serve sees the new default within a request or two of its write)
        embed = (timings.get("re_embed") or 0) + (timings.get("switch") or 0)
        switching = ([r for r in every if switched_at - embed - 1.0 <= r[0] <= switched_at]
                     if switched_at is not None else [])
        back = sum(1 for log in self.records for a, b in zip(log, log[1:], strict=False)
                   if new and a[3] == new and b[3] != new)
        return {
            "clients": self.count,
            "requests": len(every),
            "requests_during_tune": len(during),
            "errors": len(errors),
            "error_examples": [r[3][:200] for r in errors[:3]],
            "latency_before_tune": percentiles([r[1] * 1000 for r in before]) if before else {},
            "slowest_before_tune_ms": round(max((r[1] for r in before), default=0) * 1000, 1),
            "requests_during_re_embed_and_switch": len(switching),
            "errors_during_re_embed_and_switch": sum(1 for r in switching if r[2] != 200),
            "slowest_during_re_embed_and_switch_ms": round(
                max((r[1] for r in switching), default=0) * 1000, 1),
            "latency_during_re_embed_and_switch": percentiles(
                [r[1] * 1000 for r in switching]) if switching else {},
            "latency_during_tune": percentiles([r[1] * 1000 for r in during]) if during else {},
            "slowest_during_tune_ms": round(max((r[1] for r in during), default=0) * 1000, 1),
            "requests_within_10s_of_switch": len(near),
            "slowest_within_10s_of_switch_ms": round(max((r[1] for r in near), default=0)
                                                     * 1000, 1),
            "switch_seen_after_tune_start_s": (round(switched_at - tune_start, 1)
                                               if switched_at is not None else None),
            "answers_back_to_old_model_after_new": back,
            "models_seen": sorted({r[3] for r in every if r[2] == 200}),
        }


def show(figures: dict) -> None:
    report, serve = figures["tune"], figures["serve"]
    print(f"load before: {figures['load']['before']}")
    print(f"load after:  {figures['load']['after']}")
    print(f"index (setup) {figures['index_seconds']:.1f} s")
    if "current" in report:
        _show_tune(report)
    else:
        print(f"{report['decision']['reason']} in {report['timings']['switch']:.1f} s")
    print(f"serve: {serve['requests_during_tune']} requests during the tune "
          f"({serve['clients']} clients), errors {serve['errors']}, slowest "
          f"{serve['slowest_during_tune_ms']} ms, p50 "
          f"{serve['latency_during_tune'].get('p50_ms')} ms; within 10 s of the switch "
          f"{serve['requests_within_10s_of_switch']} requests, slowest "
          f"{serve['slowest_within_10s_of_switch_ms']} ms; models seen {serve['models_seen']}")
    print(f"serve before the tune: p50 {serve['latency_before_tune'].get('p50_ms')} ms, slowest "
          f"{serve['slowest_before_tune_ms']} ms; during re-embed + switch: "
          f"{serve['requests_during_re_embed_and_switch']} requests, errors "
          f"{serve['errors_during_re_embed_and_switch']}, p50 "
          f"{serve['latency_during_re_embed_and_switch'].get('p50_ms')} ms, slowest "
          f"{serve['slowest_during_re_embed_and_switch_ms']} ms")


def _show_tune(report: dict) -> None:
    print(f"current   {report['current']['model']}")
    print(f"candidate {report['candidate']['model']} ({report['train']['steps']} steps, "
          f"{report['train']['train_pairs']} pairs, held out {report['train']['val_pairs']})")
    for direction in ("text_to_image", "image_to_text"):
        for k in ("R@1", "R@5", "R@10"):
            cur, cand = report["current"][direction][k], report["candidate"][direction][k]
            print(f"  {direction:13s} {k:4s} {cur:.4f} -> {cand:.4f} ({cand - cur:+.4f})")
    print(report["decision"]["reason"])
    print("stages: " + ", ".join(f"{name} {s:.1f} s" for name, s in report["timings"].items()
                                 if s is not None))


if __name__ == "__main__":
    main()
