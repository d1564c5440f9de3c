"""Warm text-query latency under each thread policy, on an idle host and under a synthetic load.

A short text query is a chain of small matrix products. Two threads halve it on an idle 2-core
host, and make it several times slower on a busy one (each barrier waits for a thread the
scheduler gave to another process). This program times one new 5-15 token query through
`Encoder.encode_texts` under `EncoderSettings.query_threads` = 1, 0 (torch's default: every core)
and None (by load, the default), interleaved, first as the host is, then with `--load N` busy
processes beside it (default: one per core), for a compute-bound model (ViT-B-32) and a tiny one.

    .venv/bin/python bench/query_threads.py            # prints the figures
    .venv/bin/python bench/query_threads.py --record   # also bench/results/query_threads.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import percentiles, write_result  # noqa: E402
from query import QUERIES  # noqa: E402

POLICIES = {"one thread": 1, "all cores": 0, "by load (default)": None}


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def time_policies(model: str, repeats: int) -> dict:
    """p50/p95 of a new query under each policy, interleaved query by query."""
    from searchengine.encoder import Encoder, query_threads
    from searchengine.settings import EncoderSettings

    base = Encoder.load(model, EncoderSettings(device="cpu"))
    encoders = {}
    for name, threads in POLICIES.items():
        encoder = Encoder(base.spec, EncoderSettings(device="cpu", query_threads=threads))
        encoder.model = base.model  # one set of weights, three policies
        encoder.encode_texts(QUERIES[:1])  # warm
        encoders[name] = encoder
    samples: dict[str, list[float]] = {name: [] for name in POLICIES}
    chosen = []
    for i in range(repeats):
        query = [QUERIES[i % len(QUERIES)]]
        for name, encoder in encoders.items():
            encoder.clear_text_cache()
            start = time.perf_counter()
            encoder.encode_texts(query)
            samples[name].append((time.perf_counter() - start) * 1000)
        chosen.append(query_threads(None))
    row = {name: percentiles(values) for name, values in samples.items()}
    row["threads_by_load"] = sorted(set(chosen))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ViT-B-32/random,se-tiny/random")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1,
                        help="busy processes in the loaded run (0: no loaded run)")
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/query_threads.json")
    args = parser.parse_args()

    rows = []
    states = ["as is"] + (["loaded"] if args.load else [])
    for state in states:
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
                    for _ in range(args.load if state == "loaded" else 0)]
        for spinner in spinners:
            spinner.start()
        try:
            time.sleep(0.5 if spinners else 0)
            for model in args.models.split(","):
                before = os.getloadavg()
                row = time_policies(model, args.repeats)
                row.update(model=model, state=state, busy_processes=len(spinners),
                           loadavg_before=[round(x, 2) for x in before],
                           loadavg_after=[round(x, 2) for x in os.getloadavg()])
                rows.append(row)
                print(f"{model:18} {state:6} load {row['loadavg_before'][0]:5.2f}: " + ", ".join(
                    f"{name} p50 {row[name]['p50_ms']:.1f} ms (p95 {row[name]['p95_ms']:.1f})"
                    for name in POLICIES) + f"; by load chose {row['threads_by_load']}")
        finally:
            stop.set()
            for spinner in spinners:
                spinner.join()
    if args.record:
        print(write_result("query_threads", {"cpus": os.cpu_count(), "rows": rows}))


if __name__ == "__main__":
    main()
