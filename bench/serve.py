"""Warm query latency through HTTP: `searchengine serve` in its own process, queried with httpx.

Indexes generated JPEGs into a fresh home, starts the real `searchengine serve` command, waits
until it answers, then times (after warm-up) text searches, image-upload searches and cached
thumbnails over keep-alive HTTP, and the same text searches through the same app in this
process (FastAPI's TestClient: ASGI without a socket), so the difference is what the socket and
uvicorn add. Endpoints run torch on a worker thread; on this loaded two-core machine,
`Engine.search` called from a main thread with two intra-op threads was several times slower.
The indexed home is kept between runs.

Under load (`--clients 1,32,200`): that many concurrent keep-alive clients (asyncio, one
thread) send distinct text searches; throughput and p50/p95/p99 per round. With `--baseline
REV`, a second server runs the code of git revision REV on the same home, and the rounds
alternate between the two, so both see the same machine load. `--neighbour` adds a round of 8
search clients beside one client that classifies with the server's 50-label cap all along. Last,
a cold `searchengine search` process through the running server and with `--no-serve`.

    .venv/bin/python bench/serve.py [--model ViT-B-32/random] [--images 200] [--queries 200]
        [--clients 1,32,200] [--baseline 6b42701] [--neighbour] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import cli_from, imported_from, percentiles, write_result  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "searchengine-bench"
NOUNS = ["dog", "beach", "red car", "city at night", "bicycle", "mountain lake", "child", "cake",
         "boat", "snowy street", "market", "cat on a sofa", "forest path", "bridge", "kitchen"]


def make_photos(count: int, folder: Path) -> Path:
    """`count` 640x480 JPEGs of random shapes on gradients (cached between runs)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"photo_{i:04d}.jpg"
        if path.exists():
            continue
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, 480)[:, None, None]
        pixels = (top * (1 - ramp) + bottom * ramp).repeat(640, axis=1).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, 560), rng.integers(0, 400)
            box = (x, y, x + rng.integers(20, 200), y + rng.integers(20, 200))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        image.save(path, quality=88)
    return folder


def server_log(port: int) -> Path:
    """Where the server on `port` writes its log."""
    return CACHE / f"serve-{port}.log"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(home: Path, model: str, port: int,
                 code: Path | None = None) -> tuple[subprocess.Popen, float]:
    """Run `searchengine serve` (of the package under `code`, else the installed one); returns
    the process and seconds until /api/status answered."""
    import httpx

    cli, env = cli_from(code)
    command = [*cli, "serve", "--home", str(home), "--model", model, "--port", str(port)]
    env = {**env, "SEARCHENGINE_TOKEN": ""}
    started = time.perf_counter()
    log = server_log(port)  # a file, not a pipe: uvicorn logs every request, a full pipe blocks it
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env)
    while time.perf_counter() - started < 300:
        if process.poll() is not None:
            raise SystemExit(f"serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).status_code == 200:
                imported_from(log.read_text(errors="replace"), code)
                return process, time.perf_counter() - started
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("serve did not answer within 300 s")


def checkout(revision: str, folder: Path) -> Path:
    """The `searchengine` package of git `revision` (migrations in place), under `folder`."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", revision, "searchengine",
                              "migrations"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "migrations").rename(folder / "searchengine" / "migrations")
    return folder


async def load_round(base: str, clients: int, requests: int, k: int, *,
                     offset: int = 0) -> dict:
    """`clients` concurrent keep-alive clients send `requests` distinct text searches in all."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    numbers = itertools.count(offset)
    last = offset + requests
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        async def one_client() -> None:
            while (i := next(numbers)) < last:
                start = time.perf_counter()
                try:
                    response = await client.get("/api/search", params={"q": query(i), "k": k})
                    response.raise_for_status()
                except httpx.HTTPError as error:  # counted and shown, not fatal to the round
                    errors.append(f"{type(error).__name__}: {error}")
                    continue
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    return {"clients": clients, "requests": requests,
            "throughput_per_s": round(len(latencies) / seconds, 2), **percentiles(latencies),
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


async def neighbour_round(base: str, requests: int, k: int, labels: int) -> dict:
    """8 text-search clients beside one client classifying image 1 against `labels` labels
    (ensemble templates) all along: the searches' latency, and how many classifications ran."""
    import httpx

    done = asyncio.Event()
    classified = 0
    names = ",".join(f"{NOUNS[i % len(NOUNS)]} {i}" for i in range(labels))
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        async def classify() -> None:
            nonlocal classified
            while not done.is_set():
                response = await client.get("/api/classify/1", params={"labels": names})
                response.raise_for_status()
                classified += 1

        neighbour = asyncio.create_task(classify())
        await asyncio.sleep(0.5)  # the first classification is under way
        figures = await load_round(base, 8, requests, k, offset=10**6)
        done.set()
        await neighbour
    return {**figures, "classifications_beside": classified, "labels": labels}


def cold_cli(home: Path, model: str, runs: int) -> dict:
    """Median seconds of a whole `searchengine search` process: through the running server,
    and with `--no-serve` (loads the model here)."""
    script = str(Path(sys.executable).with_name("searchengine"))
    figures = {}
    for name, extra in (("through_serve", []), ("local", ["--no-serve"])):
        seconds = []
        for i in range(runs):
            start = time.perf_counter()
            subprocess.run([script, "search", query(i), "--home", str(home), "--model", model,
                            *extra], check=True, capture_output=True)
            seconds.append(time.perf_counter() - start)
        figures[f"{name}_median_s"] = round(sorted(seconds)[len(seconds) // 2], 3)
    return figures


def timed(call, count: int) -> list[float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def query(i: int) -> str:
    return f"a photo of a {NOUNS[i % len(NOUNS)]}, take {i}"


def measure(base: str, engine, args, photos: list[Path]) -> dict:
    """Text searches alternate between HTTP and in-process calls, so both see the same load."""
    import httpx
    from fastapi.testclient import TestClient

    from searchengine.server import ServerSettings, create_app

    upload = photos[0].read_bytes()
    in_process = TestClient(create_app(engine, ServerSettings(model=args.model)))
    with httpx.Client(base_url=base, timeout=60) as client:
        def search(i: int) -> None:
            response = client.get("/api/search", params={"q": query(i), "k": args.k})
            response.raise_for_status()

        def direct(i: int) -> None:  # the same app in-process (ASGI, no socket)
            response = in_process.get("/api/search", params={"q": query(i), "k": args.k})
            response.raise_for_status()

        def by_image(_i: int) -> None:
            files = {"image": ("query.jpg", io.BytesIO(upload), "image/jpeg")}
            client.post("/api/search/image", params={"k": args.k}, files=files).raise_for_status()

        def thumbnail(i: int) -> None:
            client.get(f"/api/images/{1 + i % 24}/thumbnail").raise_for_status()

        timed(direct, 10)  # warm-up: first calls pay lazy allocations
        direct_ms = timed(direct, args.queries)  # the server idles meanwhile
        timed(search, 10)
        http_ms = timed(search, args.queries)
        timed(by_image, 3)
        image = percentiles(timed(by_image, max(20, args.queries // 5)))
        timed(thumbnail, 24)  # renders and caches 24 thumbnails
        thumbs = percentiles(timed(thumbnail, args.queries))
    return {"text_search_http": percentiles(http_ms),
            "text_search_asgi_in_process": percentiles(direct_ms),
            "image_upload_search_http": image, "cached_thumbnail_http": thumbs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32/random")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--clients", default="",
                        help="concurrent clients per load round, e.g. 1,32,200 (none: no rounds)")
    parser.add_argument("--rounds", type=int, default=1, help="load rounds per client count")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also serve git revision REV and alternate the rounds with it")
    parser.add_argument("--neighbour", action="store_true",
                        help="a round of searches beside a client classifying all along")
    parser.add_argument("--cold-runs", type=int, default=0,
                        help="time this many `searchengine search` processes each way")
    parser.add_argument("--skip-latency", action="store_true",
                        help="skip the one-client latency figures (and the in-process app)")
    parser.add_argument("--record", action="store_true", help="write bench/results/serve.json")
    args = parser.parse_args()

    from searchengine.engine import Engine
    from searchengine.settings import IngestSettings

    folder = make_photos(args.images, CACHE / f"serve-photos-{args.images}")
    photos = sorted(folder.glob("*.jpg"))[: args.images]
    home = CACHE / f"serve-home-{args.model.replace('/', '_')}-{args.images}"
    payload: dict = {"model": args.model, "images": len(photos), "k": args.k}
    with Engine.open(home) as engine, tempfile.TemporaryDirectory() as scratch:
        report = engine.index([folder], model=args.model, settings=IngestSettings())
        print(f"indexed {report.embedded} images in {report.seconds:.1f} s ({report.unchanged} "
              "unchanged from an earlier run)")
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        try:
            if args.baseline:
                code = checkout(args.baseline, Path(scratch))
                # a home of its own, indexed by that code: an older server may not open a
                # catalog at a newer schema (it did not matter while this bench ran the
                # checkout's code for both servers, see common.cli_from)
                old_home = Path(scratch) / "home"
                cli, env = cli_from(code)
                subprocess.run([*cli, "index", str(folder), "--home", str(old_home), "--model",
                                args.model], env=env, check=True, capture_output=True)
                port = free_port()
                process, _ = start_server(old_home, args.model, port, code)
                servers[f"baseline {args.baseline}"] = (process, f"http://127.0.0.1:{port}")
            port = free_port()
            process, startup = start_server(home, args.model, port)
            servers["this tree"] = (process, f"http://127.0.0.1:{port}")
            base = servers["this tree"][1]
            payload["startup_seconds"] = round(startup, 2)
            if not args.skip_latency:
                payload.update(latency(base, engine, args, photos))
            if args.clients:
                payload["load"] = load(servers, args)
            if args.neighbour:
                payload["beside_classify"] = beside_classify(servers, args)
            if args.cold_runs:
                payload["cold_cli"] = cold_cli_figures(home, args)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    if args.record:
        write_result("serve", {
            **payload,
            "server": "searchengine serve (uvicorn, one process), httpx keep-alive clients, "
                      "loopback",
            "note": "clients, servers and the in-process engine share the machine's CPUs",
            "os_cpu_count": os.cpu_count(),
        })


def latency(base: str, engine, args, photos: list[Path]) -> dict:
    figures = measure(base, engine, args, photos)
    direct = figures["text_search_asgi_in_process"]
    overhead = round(figures["text_search_http"]["p50_ms"] - direct["p50_ms"], 3)
    for name, values in figures.items():
        print(f"{name}: p50 {values['p50_ms']:.1f} ms, p95 {values['p95_ms']:.1f} ms "
              f"(n={values['n']})")
    print(f"socket + uvicorn overhead at p50: {overhead:.1f} ms")
    return {**figures, "http_overhead_p50_ms": overhead}


def load(servers: dict[str, tuple[subprocess.Popen, str]], args) -> dict:
    """Rounds of concurrent text searches, alternating between the servers."""
    results: dict[str, list[dict]] = {name: [] for name in servers}
    names = list(servers)
    for name in names:  # warm-up: first calls pay lazy allocations
        asyncio.run(load_round(servers[name][1], 4, 20, args.k, offset=10**7))
    for counts in range(args.rounds):
        for clients in (int(c) for c in args.clients.split(",")):
            order = names if counts % 2 == 0 else names[::-1]
            for name in order:
                requests = max(60, 3 * clients)
                figures = asyncio.run(load_round(servers[name][1], clients, requests, args.k))
                results[name].append(figures)
                print(f"{name}: {clients} clients, {requests} searches: "
                      f"{figures['throughput_per_s']:.1f}/s, p50 {figures['p50_ms']:.0f} ms, "
                      f"p95 {figures['p95_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms "
                      f"(load average {figures['loadavg_1m']})")
                if figures["errors"]:
                    print(f"  {figures['errors']} failed, e.g. {figures['first_error']}")
                if servers[name][0].poll() is not None:
                    port = int(servers[name][1].rsplit(":", 1)[1])
                    raise SystemExit(f"{name} exited: {server_log(port).read_text()[-3000:]}")
    return results


def beside_classify(servers: dict[str, tuple[subprocess.Popen, str]], args) -> dict:
    results = {}
    for name, (_, base) in servers.items():
        figures = asyncio.run(neighbour_round(base, 80, args.k, labels=50))
        results[name] = figures
        print(f"{name}: 8 search clients beside a 50-label classify loop: "
              f"{figures['throughput_per_s']:.1f}/s, p50 {figures['p50_ms']:.0f} ms, "
              f"p95 {figures['p95_ms']:.0f} ms ({figures['classifications_beside']} "
              f"classifications meanwhile; load average {figures['loadavg_1m']})")
    return results


def cold_cli_figures(home: Path, args) -> dict:
    figures = cold_cli(home, args.model, args.cold_runs)
    print(f"cold `searchengine search`: {figures['through_serve_median_s']:.2f} s through serve, "
          f"{figures['local_median_s']:.2f} s with --no-serve (median of {args.cold_runs}; "
          f"load average {os.getloadavg()[0]:.2f})")
    return figures


if __name__ == "__main__":
    main()
