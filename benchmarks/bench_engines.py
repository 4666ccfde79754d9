"""Engine overhead: stepmap's local and Dask engines against the raw pools they stand on.

    (a) 10,000 tiny items (index², the TINY workload below: all overhead, no work)
    (b) s3keys size 4096
    (c) 100,000 tiny items: local engine (results store included) vs ProcessPoolExecutor.map
    (d) whole processes: `stepmap run` of 1,000 .. 1,000,000 tiny items with default options
        against a bare `python -c` ProcessPoolExecutor.map process (interpreter start-up,
        imports, fsyncs and the results round trip included)
    (e) whole processes: `stepmap run s3keys --size 1024` against a bare `python -c` loop

Raw baselines do the same work with no stepmap: ProcessPoolExecutor.map with a chunksize of
items / (4 × workers), and dask's client.map (one task per item, and one per stepmap batch) on
an already running LocalCluster. Every variant must produce the same total. Times are the best
of ``--repeat`` runs, all measured in this run on this machine; ratios are against the
ProcessPoolExecutor baseline.

    cd /work/main && .venv/bin/python -m benchmarks.bench_engines [--workers N] [--repeat 5]
                                                [--sections abcde]

(d) and (e) interleave the two commands and report the median of the per-pair ratios, so
both sides of a ratio see the same machine load; the load average is printed with them.

Workers import the tiny workload by name (``benchmarks.tiny:TINY``), so the repository root
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
from stepmap.mapper import auto_batch_size  # noqa: E402
from stepmap.workloads import s3keys_math as maths  # noqa: E402

TINY_REF = "benchmarks.tiny:TINY"
ARTICLE = maths.ALPHABETS["article"]


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


def pool_sections(workers: int, repeat: int) -> list[str]:
    """(a) and (b): in-process runs against the raw pools, Dask included."""
    import logging

    from distributed import Client, LocalCluster

    out = []
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
    return out


def in_process_section(workers: int, repeat: int) -> list[str]:
    """(c): the local engine inside this process against ProcessPoolExecutor.map."""
    n = 100_000
    pool_chunk = math.ceil(n / (workers * 4))
    with tempfile.TemporaryDirectory() as runs:
        bare, bare_total = best(repeat, lambda: raw_pool(square, range(n), workers, pool_chunk))
        engine, engine_total = best(repeat, lambda: stepmap_run(
            TINY_REF, {"items": n}, "local", {"workers": workers}, runs))
    assert bare_total == engine_total
    return [f"### (c) {n:,} tiny items: local engine (results store included) vs bare pool",
            "", "| variant | seconds | ratio | overhead per item |", "|---|---:|---:|---:|",
            f"| ProcessPoolExecutor.map, chunksize {pool_chunk} (baseline) | {bare:.3f} | "
            f"1.00× | — |",
            f"| stepmap local engine (batches of {auto_batch_size(n, workers)}) | "
            f"{engine:.3f} | {engine / bare:.2f}× | {(engine - bare) / n * 1e6:.1f} µs |", ""]


# -------------------------------------------------- whole processes, interleaved

BARE_POOL = """
import math, os, sys
from concurrent.futures import ProcessPoolExecutor
def square(i):
    return i * i
n, workers = int(sys.argv[1]), os.cpu_count() or 1
with ProcessPoolExecutor(workers) as pool:
    print(sum(pool.map(square, range(n), chunksize=math.ceil(n / (workers * 4)))))
"""


def interleaved(commands: dict[str, list[str]], repeat: int) -> dict[str, list[float]]:
    """Run each command ``repeat`` times, taking turns; every run must print the same."""
    import subprocess
    times: dict[str, list[float]] = {name: [] for name in commands}
    outputs = set()
    for _ in range(repeat):
        for name, command in commands.items():
            began = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            times[name].append(time.perf_counter() - began)
            assert done.returncode == 0, (command, done.stderr[-2000:])
            outputs.add(done.stdout.strip())
    assert len(outputs) == 1, f"the commands disagree: {[o[:60] for o in outputs]}"
    return times


def stepmap_command() -> list[str]:
    """The installed ``stepmap`` script, as a user runs it (``python -m stepmap`` also pays
    for runpy), or ``python -m stepmap`` where the script is not installed."""
    script = Path(sys.executable).parent / "stepmap"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stepmap"]


def ratio_row(label: str, bare: list[float], ours: list[float], goal: float) -> str:
    import statistics
    ratios = [o / b for o, b in zip(ours, bare)]
    ratio = statistics.median(ratios)
    return (f"| {label} | {statistics.median(bare):.3f} | {statistics.median(ours):.3f} | "
            f"{ratio:.2f}× | {min(ratios):.2f}–{max(ratios):.2f}× | "
            f"{'yes' if ratio <= goal else 'NO'} (≤ {goal:g}×) |")


def process_sections(repeat: int, sizes: list[int], s3keys: bool = True) -> list[str]:
    """(d) and (e): whole `stepmap run` processes against bare Python processes."""
    import subprocess
    from benchmarks.bench_s3keys import BARE  # the same recurrence loop as bench_s3keys
    # as installed: byte-compiled (PYTHONDONTWRITEBYTECODE would otherwise recompile each start)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src"),
                    str(ROOT / "benchmarks")], check=True, stdout=subprocess.DEVNULL)
    load_before = os.getloadavg()
    header = ["| | bare (s) | stepmap (s) | median ratio | range | goal met |",
              "|---|---:|---:|---:|---:|---|"]
    out = [f"### (d) whole processes: `stepmap run benchmarks.tiny:TINY --items N` (default "
           f"options) vs a bare ProcessPoolExecutor.map process; interleaved, median of "
           f"{repeat}", ""] + header if sizes else []
    with tempfile.TemporaryDirectory() as runs:
        for n in sizes:
            times = interleaved({
                "bare": [sys.executable, "-c", BARE_POOL, str(n)],
                "stepmap": [*stepmap_command(), "run", TINY_REF, "--items",
                            str(n), "--quiet", "--results", runs]}, repeat)
            out.append(ratio_row(f"{n:,} items", times["bare"], times["stepmap"], 1.3))
            print(out[-1], flush=True)
        size = 1024
        if s3keys:
            times = interleaved({
                "bare": [sys.executable, "-c", BARE.format(size=size)],
                "stepmap": [*stepmap_command(), "run", "s3keys", "--size",
                            str(size), "--quiet", "--results", runs]}, repeat)
            out += ["", f"### (e) `stepmap run s3keys --size {size}` vs a bare `python -c` "
                    f"recurrence loop; interleaved, median of {repeat}", ""] + header
            out.append(ratio_row(f"s3keys size {size}", times["bare"], times["stepmap"], 5.0))
    load_after = os.getloadavg()
    out += ["", "load average (1, 5, 15 min) before: %.2f %.2f %.2f, after: %.2f %.2f %.2f"
            % (*load_before, *load_after), ""]
    return out


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sections", default="abcde", help="which tables (default abcde)")
    parser.add_argument("--sizes", default="1000,10000,100000,1000000",
                        help="(d)'s item counts")
    args = parser.parse_args(argv)
    workers, repeat = args.workers, args.repeat
    out = [f"{machine()}; {workers} workers; best of {repeat} in (a)-(c)", ""]
    if "a" in args.sections or "b" in args.sections:
        import dask
        import distributed
        out[0] += f"; dask {dask.__version__}, distributed {distributed.__version__}"
        out += pool_sections(workers, repeat)
    if "c" in args.sections:
        out += in_process_section(workers, repeat)
    if "d" in args.sections or "e" in args.sections:
        sizes = [int(n) for n in args.sizes.split(",")] if "d" in args.sections else []
        out += process_sections(repeat, sizes, s3keys="e" in args.sections)
    print("\n".join(out))


if __name__ == "__main__":
    main()
