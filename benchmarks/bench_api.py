"""stepmap.map against the pools Python users already have, on the same work and machine.

    python benchmarks/bench_api.py [--reps 3] [--workers 2] [--lithops-python PATH]

Contenders (each measurement in a fresh subprocess, contenders interleaved round by round,
the median of ``--reps`` reported, as a ratio to the bare process pool measured in the same
run): ``stepmap.map`` (local engine, results written to a runs directory, as always),
``ProcessPoolExecutor.map`` and ``multiprocessing.Pool.map`` (both with Pool.map's chunking:
about four chunks per worker), Dask ``client.map`` (a LocalCluster of the same size, started
before the clock starts) and Lithops' localhost ``FunctionExecutor.map`` (run with the Python
of a separate venv given by ``--lithops-python``; lithops is not a stepmap dependency).

Work: 1,000 / 10,000 / 100,000 tiny items (x*x+1: the cost is all overhead) given as a
``range``, the same 100,000 given as a list (``--list-sizes``: a list is what most programs
have, and it travels differently: see the README), and a few hundred uneven heavy items (a
pure-Python loop whose length varies 10x between items): ``heavy``, skewed so a few items
dominate, spread evenly over the positions, and ``heavy-growing``, whose cost grows with the
position (as a sweep over sizes does: s3keys' item n costs more as n grows). For the heavy
items the table also gives their floor: the same items computed one after the other in one
process, divided by the number of workers (no pool can beat it by more than noise), and
``ProcessPoolExecutor.map`` with its own default, one item per task
("ProcessPoolExecutor, chunksize 1"; for tiny items that default is hopeless). Each timing covers starting the pool, the map, and stopping the pool; not
importing the library (a program pays that once: the library is imported, and the local pools
called once on two items, before the clock starts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY_ITEMS = 300
HEAVY_BASE = 60_000  # loop iterations of the cheapest heavy item


def tiny(x):
    return x * x + 1


def heavy_cost(x: int) -> int:
    """Uneven, deterministic: most items cheap, a few ten times as costly."""
    return int(HEAVY_BASE * (1 + 9 * (((x * 7919) % 100) / 100) ** 4))


def heavy(x):
    total = 0
    for i in range(heavy_cost(x)):
        total += i * i
    return total


def heavy_growing(x):
    """Cost grows with the position, 10x from the first item to the last (from half the
    cheapest heavy item, so that both heavy works cost about the same in all)."""
    total = 0
    for i in range(int(HEAVY_BASE / 2 * (1 + 9 * x / (HEAVY_ITEMS - 1)))):
        total += i * i
    return total


KINDS = {"tiny": tiny, "tiny-list": tiny, "heavy": heavy, "heavy-growing": heavy_growing}


def chunks(n: int, workers: int) -> int:
    return max(1, math.ceil(n / (workers * 4)))


# ------------------------------------------------------------ one measurement (child process)

def measure(contender: str, kind: str, n: int, workers: int) -> float:
    fn = KINDS[kind]
    items = list(range(n)) if kind == "tiny-list" else range(n)
    if contender == "floor":
        began = time.perf_counter()
        out = [fn(x) for x in items]
        return (time.perf_counter() - began) / workers
    if contender == "dask":
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            began = time.perf_counter()
            out = client.gather(client.map(fn, items))
            seconds = time.perf_counter() - began
    else:
        __import__(IMPORTS[contender])  # imports are not timed: a program pays them once
        if contender != "lithops":  # and a warm-up call imports what the library imports lazily
            RUNNERS[contender](fn, items[:2], workers)  # a list warms up with a list
        began = time.perf_counter()
        out = RUNNERS[contender](fn, items, workers)
        seconds = time.perf_counter() - began
    assert out == [fn(x) for x in items], contender
    return seconds


def run_stepmap(fn, items, workers):
    import stepmap
    with tempfile.TemporaryDirectory() as runs:
        return list(stepmap.map(fn, items, workers=workers, runs=runs, progress=False))


def run_executor(fn, items, workers):
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, items, chunksize=chunks(len(items), workers)))


def run_executor_default(fn, items, workers):
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def run_pool(fn, items, workers):
    import multiprocessing
    with multiprocessing.Pool(workers) as pool:
        return pool.map(fn, items)


def run_lithops(fn, items, workers):
    import lithops
    executor = lithops.LocalhostExecutor(log_level=None, worker_processes=workers)
    futures = executor.map(fn, list(items))
    out = executor.get_result(futures)
    executor.clean()
    return out


PPE1 = "ProcessPoolExecutor, chunksize 1"
IMPORTS = {"stepmap": "stepmap.api", "ProcessPoolExecutor": "concurrent.futures",
           PPE1: "concurrent.futures", "Pool": "multiprocessing.pool", "lithops": "lithops"}
RUNNERS = {"stepmap": run_stepmap, "ProcessPoolExecutor": run_executor,
           PPE1: run_executor_default, "Pool": run_pool, "lithops": run_lithops}
HEAVY_ONLY = ("floor", PPE1)  # measured on heavy items only


# ------------------------------------------------------------ the orchestra (parent)

def one(python: str, contender: str, kind: str, n: int, workers: int) -> float | None:
    # lithops' localhost backend starts `python` from PATH: make it the venv's
    env = {**os.environ, "PATH": os.path.dirname(python) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run([python, os.path.abspath(__file__), "--one", contender, kind, str(n),
                           str(workers)], capture_output=True, text=True, timeout=3600, env=env)
    if proc.returncode != 0:
        print(f"  {contender} {kind} {n}: failed: {proc.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--lithops-python", help="a Python with lithops installed")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--list-sizes", default="100000",
                        help="tiny sizes also run with the items given as a list")
    parser.add_argument("--dask-max", type=int, default=10_000,
                        help="largest tiny size run on Dask (one task per item: 100,000 "
                             "takes minutes)")
    parser.add_argument("--lithops-max", type=int, default=0,
                        help="largest tiny size run on Lithops (its localhost backend took "
                             "129 s for 100 tiny items here: default 0, heavy items only)")
    parser.add_argument("--lithops-reps", type=int, default=1)
    parser.add_argument("--json", help="write the raw timings here (not into the repo)")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        contender, kind, n, workers = args.one
        print(measure(contender, kind, int(n), int(workers)))
        return
    contenders = ["stepmap", "ProcessPoolExecutor", "Pool", "dask"]
    if args.lithops_python:
        contenders.append("lithops")
    work = ([("tiny", int(n)) for n in args.sizes.split(",")]
            + [("tiny-list", int(n)) for n in args.list_sizes.split(",") if n]
            + [("heavy", HEAVY_ITEMS), ("heavy-growing", HEAVY_ITEMS)])
    times: dict = {}
    for rep in range(args.reps):
        for kind, n in work:
            here = contenders + list(HEAVY_ONLY) if kind.startswith("heavy") else contenders
            order = here[rep % len(here):] + here[:rep % len(here)]
            for contender in order:
                if contender == "dask" and kind.startswith("tiny") and n > args.dask_max:
                    continue
                if contender == "lithops" and (rep >= args.lithops_reps
                                               or kind.startswith("tiny")
                                               and n > args.lithops_max):
                    continue
                python = args.lithops_python if contender == "lithops" else sys.executable
                seconds = one(python, contender, kind, n, args.workers)
                if seconds is not None:
                    times.setdefault(f"{kind} {n}", {}).setdefault(contender, []).append(seconds)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(times, handle, indent=1)
    print(table(times, contenders, args))


def table(times: dict, contenders: list[str], args) -> str:
    contenders = contenders + list(HEAVY_ONLY)
    lines = [f"{args.workers} workers, median of {args.reps} (seconds; ratio to the bare "
             "pool = the faster of ProcessPoolExecutor and Pool; floor = the heavy items one "
             "after the other in one process, divided by the workers)", "",
             "| work | " + " | ".join(contenders) + " |",
             "|---|" + "---:|" * len(contenders)]
    for work, by in times.items():
        medians = {c: statistics.median(v) for c, v in by.items()}
        bare = min(medians[c] for c in ("ProcessPoolExecutor", "Pool") if c in medians)
        counts = {c: len(v) for c, v in by.items()}
        cells = [f"{medians[c]:.3f} s ({medians[c] / bare:.2f}x)"
                 + (f" [{counts[c]} run]" if counts[c] == 1 and args.reps > 1 else "")
                 if c in medians else "—" for c in contenders]
        lines.append(f"| {work} items | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
