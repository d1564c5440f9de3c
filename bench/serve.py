"""Warm query latency through HTTP: `searchengine serve` in its own process, queried with httpx.

Indexes generated JPEGs into a fresh home, starts the real `searchengine serve` command, waits
until it answers, then times (after warm-up) text searches, image-upload searches and cached
thumbnails over keep-alive HTTP, and the same text searches through the same app in this
process (FastAPI's TestClient: ASGI without a socket), so the difference is what the socket and
uvicorn add. Endpoints run torch on a worker thread; on this loaded two-core machine,
`Engine.search` called from a main thread with two intra-op threads was several times slower.
The indexed home is kept between runs.

    .venv/bin/python bench/serve.py [--model ViT-B-32/random] [--images 200] [--queries 200]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import percentiles, write_result  # noqa: E402

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(home: Path, model: str, port: int) -> tuple[subprocess.Popen, float]:
    """Run `searchengine serve`; returns the process and seconds until /api/status answered."""
    import httpx

    command = [str(Path(sys.executable).with_name("searchengine")), "serve", "--home", str(home),
               "--model", model, "--port", str(port)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while time.perf_counter() - started < 300:
        if process.poll() is not None:
            raise SystemExit(f"serve exited: {process.stderr.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("serve did not answer within 300 s")


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
    args = parser.parse_args()

    from searchengine.engine import Engine
    from searchengine.settings import IngestSettings

    folder = make_photos(args.images, CACHE / f"serve-photos-{args.images}")
    photos = sorted(folder.glob("*.jpg"))[: args.images]
    home = CACHE / f"serve-home-{args.model.replace('/', '_')}-{args.images}"
    with Engine.open(home) as engine:
        report = engine.index([folder], model=args.model, settings=IngestSettings())
        print(f"indexed {report.embedded} images in {report.seconds:.1f} s ({report.unchanged} "
              "unchanged from an earlier run)")
        port = free_port()
        process, startup = start_server(home, args.model, port)
        try:
            figures = measure(f"http://127.0.0.1:{port}", engine, args, photos)
        finally:
            process.terminate()
            process.wait(timeout=30)

    direct = figures["text_search_asgi_in_process"]
    overhead = round(figures["text_search_http"]["p50_ms"] - direct["p50_ms"], 3)
    print(f"startup (process start -> first answer): {startup:.1f} s")
    for name, values in figures.items():
        print(f"{name}: p50 {values['p50_ms']:.1f} ms, p95 {values['p95_ms']:.1f} ms "
              f"(n={values['n']})")
    print(f"socket + uvicorn overhead at p50: {overhead:.1f} ms")
    write_result("serve", {
        "model": args.model, "images": len(photos), "k": args.k,
        "server": "searchengine serve (uvicorn, one process), httpx keep-alive client, loopback",
        "startup_seconds": round(startup, 2),
        **figures,
        "http_overhead_p50_ms": overhead,
        "note": "client, server and the in-process engine share the machine's CPUs",
        "os_cpu_count": os.cpu_count(),
    })


if __name__ == "__main__":
    main()
