"""Engine overhead: stepmap's local and Dask engines against the raw pools they stand on.

    (a) 10,000 tiny items (index², the TINY workload below: all overhead, no work)
    (b) s3keys size 4096
    (c) 100,000 tiny items: local engine (results store included) vs ProcessPoolExecutor.map

Raw baselines do the same work with no stepmap: ProcessPoolExecutor.map with a chunksize of
items / (4 × workers), and dask's client.map (one task per item, and one per stepmap batch) on
an already running LocalCluster. Every variant must produce the same total. Times are the best
of ``--repeat`` runs, all measured in this run on this machine; ratios are against the
ProcessPoolExecutor baseline.

    cd /work/main && .venv/bin/python -m benchmarks.bench_engines [--workers N] [--repeat 5]

Workers import this module by name (``benchmarks.bench_engines:TINY``), so the repository root
is put on sys.path and PYTHONPATH before any worker starts.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT / "src"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))])

from stepmap import runner  # noqa: E402
from stepmap.job import Param, Params, Start, Workload, event_items  # noqa: E402
from stepmap.mapper import auto_batch_size  # noqa: E402
from stepmap.workloads import s3keys_math as maths  # noqa: E402

TINY_REF = "benchmarks.bench_engines:TINY"
ARTICLE = maths.ALPHABETS["article"]


class Tiny(Workload):
    name = "tiny"
    summary = "index² per item: a step that does nothing, so only the engine is measured"
    parameters = {"items": Param("number of items (default 10,000)", int)}

    def start(self, event: dict) -> Start:
        count = Params(event).integer("items", default=10_000, low=1, high=100_000_000)
        return Start(params={}, items=range(count), count=count, summary=f"{count} tiny items")

    def compute(self, event: dict) -> int:
        return sum(item["index"] ** 2 for item in event_items(event))

    def reduce(self, outputs) -> int:
        return sum(outputs)


TINY = Tiny()


# -------------------------------------------------- raw functions (the baselines' work)

def square(i: int) -> int:
    return i * i


def squares_in(bounds: tuple[int, int]) -> int:
    return sum(i * i for i in range(*bounds))


def s3keys_in(bounds: tuple[int, int]) -> int:
    return maths.sum_jump(bounds[0], bounds[1], ARTICLE)


def chunks(count: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, count)) for lo in range(0, count, size)]


# -------------------------------------------------- variants

def raw_pool(function, items, workers: int, chunksize: int) -> int:
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(function, items, chunksize=chunksize))


def raw_dask(client, function, items) -> int:
    futures = client.map(function, items, pure=False)
    return sum(client.gather(futures))  # the futures are released when dropped here


def stepmap_run(workload: str, run_input: dict, engine: str, engine_options: dict,
                runs: str) -> int:
    report = runner.run(workload, run_input, runner.RunOptions(
        engine=engine, engine_options=engine_options, runs=runs))
    assert report.status == "SUCCEEDED", report
    return int(report.total)


def best(repeat: int, function) -> tuple[float, int]:
    times, totals = [], set()
    for _ in range(repeat):
        began = time.perf_counter()
        totals.add(function())
        times.append(time.perf_counter() - began)
    assert len(totals) == 1, totals
    return min(times), totals.pop()


def compare(title: str, variants: dict, repeat: int) -> list[str]:
    """``variants``: name -> function, or (function, repeat) for one too slow to repeat."""
    results = {name: best(*((fn[1], fn[0]) if isinstance(fn, tuple) else (repeat, fn)))
               for name, fn in variants.items()}
    totals = {total for _, total in results.values()}
    assert len(totals) == 1, f"{title}: variants disagree: {results}"
    baseline = next(iter(results.values()))[0]
    rows = [f"### {title}", "", "| variant | seconds | ratio vs baseline |", "|---|---:|---:|"]
    for name, (seconds, _) in results.items():
        rows.append(f"| {name} | {seconds:.3f} | {seconds / baseline:.2f}× |")
    return rows + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    workers, repeat = args.workers, args.repeat

    import dask
    import distributed
    from distributed import Client, LocalCluster
    import logging

    out = [f"Python {platform.python_version()}, dask {dask.__version__}, distributed "
           f"{distributed.__version__}, {os.cpu_count()} CPUs, {workers} workers, best of "
           f"{repeat}", ""]
    with tempfile.TemporaryDirectory() as runs, \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         host="127.0.0.1", dashboard_address=None,
                         scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                         silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        existing = {"scheduler": cluster.scheduler_address}
        own = {"workers": workers}
        local = {"workers": workers}

        n = 10_000
        batch = auto_batch_size(n, workers)
        pool_chunk = math.ceil(n / (workers * 4))
        out += compare(f"(a) {n:,} tiny items (stepmap batches of {batch})", {
            f"ProcessPoolExecutor.map, chunksize {pool_chunk} (baseline)":
                lambda: raw_pool(square, range(n), workers, pool_chunk),
            f"dask client.map, one task per {batch} items":
                lambda: raw_dask(client, squares_in, chunks(n, batch)),
            "stepmap local engine":
                lambda: stepmap_run(TINY_REF, {"items": n}, "local", local, runs),
            "stepmap dask engine, existing cluster":
                lambda: stepmap_run(TINY_REF, {"items": n}, "dask", existing, runs),
            "stepmap dask engine, own LocalCluster (start + stop included)":
                lambda: stepmap_run(TINY_REF, {"items": n}, "dask", own, runs),
            # last: releasing 10,000 keys keeps the scheduler busy for a while afterwards
            "dask client.map, one task per item (run once)":
                (lambda: raw_dask(client, square, range(n)), 1),
        }, repeat)

        size = 4096
        batch = auto_batch_size(size, workers)
        ranges = chunks(size, batch)
        out += compare(f"(b) s3keys size {size:,} (stepmap batches of {batch}; raw variants "
                       f"map sum_jump over the same {len(ranges)} ranges)", {
            "ProcessPoolExecutor.map, one range per task (baseline)":
                lambda: raw_pool(s3keys_in, ranges, workers, 1),
            "dask client.map, one task per range":
                lambda: raw_dask(client, s3keys_in, ranges),
            "stepmap local engine":
                lambda: stepmap_run("s3keys", {"size": size}, "local", local, runs),
            "stepmap dask engine, existing cluster":
                lambda: stepmap_run("s3keys", {"size": size}, "dask", existing, runs),
            "stepmap dask engine, own LocalCluster (start + stop included)":
                lambda: stepmap_run("s3keys", {"size": size}, "dask", own, runs),
        }, repeat)

    n = 100_000
    pool_chunk = math.ceil(n / (workers * 4))
    with tempfile.TemporaryDirectory() as runs:
        bare, bare_total = best(repeat, lambda: raw_pool(square, range(n), workers, pool_chunk))
        engine, engine_total = best(repeat, lambda: stepmap_run(
            TINY_REF, {"items": n}, "local", {"workers": workers}, runs))
    assert bare_total == engine_total
    out += [f"### (c) {n:,} tiny items: local engine (results store included) vs bare pool",
            "", "| variant | seconds | ratio | overhead per item |", "|---|---:|---:|---:|",
            f"| ProcessPoolExecutor.map, chunksize {pool_chunk} (baseline) | {bare:.3f} | "
            f"1.00× | — |",
            f"| stepmap local engine (batches of {auto_batch_size(n, workers)}) | "
            f"{engine:.3f} | {engine / bare:.2f}× | {(engine - bare) / n * 1e6:.1f} µs |", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
