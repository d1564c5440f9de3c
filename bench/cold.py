"""Cold CLI commands: the seconds of a fresh `searchengine search` process, and where they go.

Builds (once, reused with --home) a synthetic home of N catalogued fake photos with random unit
vectors under a random ViT-B-32 checkpoint saved as a file (so nothing has to be embedded), and
the ONNX export of its text tower (`onnx_text`, in the user's cache, as `index` makes it), then
times fresh processes: `searchengine --help`, `searchengine search "..."` (p50 of --repeats), and
in two extra processes the stages of that search (imports, model spec, index, text encoder,
query), its text encoded by the ONNX export and by torch.

    .venv/bin/python bench/cold.py [--vectors 100000] [--home /tmp/cold-home] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import percentiles, write_result  # noqa: E402

ARCH = "ViT-B-32"
QUERY = "a dog on the beach"
STAGES = r"""
import json, sys, time
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
from searchengine.engine import Engine; from searchengine.settings import EncoderSettings
mark("import searchengine.engine")
onnx = sys.argv[4] == "onnx"
engine = Engine.open(sys.argv[1], create=False, encoder_settings=EncoderSettings(onnx_text=onnx))
mark("open home (catalog)")
model = sys.argv[2]
engine.model_id_of(model); mark("model spec (config files, digest)")
space = engine.space(model, "image"); mark("load index (faiss)")
encoder = engine.text_encoder(model)
mark("text encoder: " + ("ONNX export" if type(encoder).__name__ != "Encoder" else
                         "import torch, open_clip; weights"))
engine.search(sys.argv[3], k=10, model=model); mark("first search")
print(json.dumps([(b[0], round((b[1] - a[1]) * 1000, 1)) for a, b in zip(marks, marks[1:])]))
"""

def build_home(home: Path, n: int) -> str:
    """A home with `n` fake photos and random unit vectors under a random ViT-B-32 checkpoint
    (`home/vit-b-32-random.pt`); returns the `--model` value naming it."""
    import torch
    from query import fill_home  # noqa: E402 -- bench/query.py, beside this file

    from searchengine.catalog import head_revision
    from searchengine.engine import Engine
    from searchengine.models import CHECKPOINT_FORMAT, build_model, parse_model_spec

    checkpoint = home / "vit-b-32-random.pt"
    model = f"{ARCH}/{checkpoint}"
    ready = home / ".cold-ready"
    # the catalog's schema revision is part of the mark: a home built under an older one has an
    # index file every read-only command would rebuild in memory, which is not a cold search
    mark = f"{n} {head_revision()}"
    if ready.exists() and ready.read_text() == mark:
        return model
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    net, _, _ = build_model(parse_model_spec(f"{ARCH}/random"), seed=0)
    torch.save({"format": CHECKPOINT_FORMAT, "arch": ARCH, "state_dict": net.state_dict()},
               checkpoint)
    del net
    start = time.perf_counter()
    with Engine.open(home) as engine:
        fill_home(engine, model, n, 512)
        engine.use_model(model)
        engine.prepare_onnx_text(model)  # as `index` does (in the user's cache)
    ready.write_text(mark)
    print(f"built a home of {n} vectors in {time.perf_counter() - start:.0f} s: {home}")
    return model


def cli_seconds(
    args: list[str], repeats: int, source: Path | None = None
) -> tuple[list[float], str]:
    """Wall seconds of `repeats` fresh `searchengine ARGS` processes, and the last stdout;
    `source`: a folder holding another `searchengine` package to run instead (PYTHONPATH)."""
    command = [str(Path(sys.executable).with_name("searchengine")), *args]
    samples, output = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=_env(source))
        samples.append(time.perf_counter() - start)
        if done.returncode:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
        output = done.stdout
    return samples, output


def _env(source: Path | None = None) -> dict[str, str]:
    extra = {"PYTHONPATH": str(source)} if source else {}
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}


def _p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--home", type=Path, default=None, help="reused when already built")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="write bench/results/cold.json")
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="a folder with another checkout's `searchengine` package (e.g. `git archive` of the "
        "commit before): its cold searches are timed too, interleaved with this tree's",
    )
    args = parser.parse_args()

    home = args.home or Path(tempfile.gettempdir()) / f"searchengine-cold-{args.vectors}"
    model = build_home(home, args.vectors)
    from searchengine.engine import Engine

    with Engine.open(home, create=False) as engine:  # the export, should the user's cache be new
        engine.prepare_onnx_text(model)
    print(f"uptime: {os.getloadavg()}")
    help_s, _ = cli_seconds(["--help"], args.repeats)
    print(f"searchengine --help: p50 {_p50(help_s):.2f} s")
    search_args = ["search", QUERY, "--home", str(home), "--model", model, "--json"]
    search_s, compare_s, output = [], [], ""
    for _ in range(args.repeats):  # interleaved, so both see the same load on the host
        seconds, output = cli_seconds(search_args, 1)
        search_s += seconds
        if args.compare:
            seconds, compared = cli_seconds(search_args, 1, args.compare)
            compare_s += seconds
            if json.loads(compared)["hits"] != json.loads(output)["hits"]:
                raise SystemExit("the compared checkout answers the search differently")
    hits = [hit["id"] for hit in json.loads(output)["hits"]]
    print(f"searchengine search: p50 {_p50(search_s):.2f} s "
          f"({', '.join(f'{s:.2f}' for s in search_s)}); top ids {hits[:3]}")
    if args.compare:
        print(f"  the same with {args.compare}: p50 {_p50(compare_s):.2f} s "
              f"({', '.join(f'{s:.2f}' for s in compare_s)}); same hits")
    print(f"loadavg after: {os.getloadavg()}")
    stage_ms = {}
    for path in ("onnx", "torch"):
        stages = subprocess.run(
            [sys.executable, "-c", STAGES, str(home), model, QUERY, path],
            capture_output=True, text=True, env=_env(), check=True,
        ).stdout
        stage_ms[path] = json.loads(stages.strip().splitlines()[-1])
        print(f"stages of one search in a fresh process, the text encoded by {path}:")
        for name, ms in stage_ms[path]:
            print(f"  {name:48} {ms:8.1f} ms")
    if args.record:
        write_result("cold", {
            "vectors": args.vectors,
            "model": f"{ARCH} random weights, checkpoint file",
            "loadavg": os.getloadavg(),
            "help_ms": percentiles([s * 1000 for s in help_s]),
            "search_ms": percentiles([s * 1000 for s in search_s]),
            "compared_search_ms": percentiles([s * 1000 for s in compare_s]) if compare_s else None,
            "search_stages_ms": {path: dict(stages) for path, stages in stage_ms.items()},
        })


if __name__ == "__main__":
    main()
