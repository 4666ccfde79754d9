"""`stepmap run s3keys --size N` (default method, local engine) against a python-flint process
computing the same total by 5x5 integer matrix power, measured in this run, interleaved.

    .venv/bin/python benchmarks/bench_flint.py                 # sizes 10^5, 10^6, 10^7
    .venv/bin/python benchmarks/bench_flint.py --sizes 100000 --repeat 5
    .venv/bin/python benchmarks/bench_flint.py --huge          # also one stepmap run at 10^8

python-flint lives only in this benchmark's own virtual environment, benchmarks/.venv-flint
(created on first use; gitignored): stepmap never needs it. Both processes print the total's
decimal digits to a file in a temporary directory (compared by SHA-256, then deleted: the
10^8 total is ~215 MB of digits and never lands in the repository). Peak memory is the
largest sum of resident set sizes over the process and all its descendants (sampled every
20 ms with psutil), so stepmap's worker processes count as well as its parent.

The goals (issue 12): at most 1.0x the FLINT process's time at 10^6 and 10^7, peak memory at
10^7 at most FLINT's, and a stored Input whose size does not grow with the item count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from process_tree import run_measured

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
VENV = HERE / ".venv-flint"
FLINT_PIN = "python-flint==0.9.0"
ARTICLE = "128,1863,42451,78341"

# S(m) = sum_{n<m} f(n) obeys x^5 = (c1+1) x^4 + (c2-c1) x^3 + (c3-c2) x^2 + (c4-c3) x - c4
# with window S(-3..1) = (0, 0, 0, 0, 1); so S(m) = (M^(m+3))[0, 4] for M its companion.
FLINT = """
import sys
from flint import fmpz_mat
size = int(sys.argv[1])
c1, c2, c3, c4 = (int(c) for c in sys.argv[2].split(","))
rec = [-c4, c4 - c3, c3 - c2, c2 - c1, c1 + 1]
rows = [[1 if j == i + 1 else 0 for j in range(5)] for i in range(4)] + [rec]
sys.stdout.write(str((fmpz_mat(rows) ** (size + 3))[0, 4]) + "\\n")
"""


def flint_python() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", FLINT_PIN], check=True)
    return str(python)


def measure(cmd: list[str], out: Path, env: dict | None = None) -> tuple[float, int, str]:
    """(seconds, peak tree RSS in bytes, sha256 of stdout) of one process run."""
    with open(out, "wb") as handle:
        seconds, peak, _, err, code = run_measured(cmd, env=env, stdout=handle)
    if code:
        raise SystemExit(f"{cmd[:4]} failed: {err.decode()[-500:]}")
    digest = hashlib.sha256()
    with open(out, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    out.unlink()
    return seconds, peak, digest.hexdigest()


def stored_input_bytes(runs: Path) -> int:
    """Bytes of the results' Input fields (what grows per item when items are not a range)."""
    total = 0
    for path in runs.glob("*/SUCCEEDED_*.json"):
        total += sum(len(entry["Input"]) for entry in json.loads(path.read_text()))
    return total


def stepmap_cmd(size: int, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stepmap", "run", "s3keys", "--size", str(size), "--quiet",
            "--results", str(runs), *extra]


def compare(size: int, repeat: int, work: Path, flint: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    rows: dict[str, list] = {"stepmap": [], "flint": []}
    digests, input_bytes = set(), 0
    for attempt in range(repeat):  # interleaved, so both see the same machine load
        runs = work / f"runs-{size}-{attempt}"
        seconds, peak, digest = measure(stepmap_cmd(size, runs), work / "stepmap.out", env)
        rows["stepmap"].append((seconds, peak))
        print(f"  size {size}: stepmap {seconds:.2f} s, {peak / 2**20:.0f} MiB", file=sys.stderr,
              flush=True)
        digests.add(digest)
        if size <= 10**7:
            input_bytes = stored_input_bytes(runs)
        subprocess.run(["rm", "-rf", str(runs)], check=True)
        seconds, peak, digest = measure([flint, "-c", FLINT, str(size), ARTICLE],
                                        work / "flint.out")
        rows["flint"].append((seconds, peak))
        print(f"  size {size}: FLINT {seconds:.2f} s, {peak / 2**20:.0f} MiB", file=sys.stderr,
              flush=True)
        digests.add(digest)
    if len(digests) != 1:
        raise SystemExit(f"size {size}: stepmap and FLINT disagree")
    result = {"size": size, "input_bytes": input_bytes}
    for name, measured in rows.items():
        result[name] = (statistics.median(s for s, _ in measured), max(p for _, p in measured))
    return result


def huge(size: int, work: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    runs = work / "runs-huge"
    # one task of several minutes: more than the default per-task timeout (900 s, Lambda's)
    # on a loaded machine, where a timed-out attempt would start over
    seconds, peak, _ = measure(stepmap_cmd(size, runs, "--timeout", "86400"),
                               work / "huge.out", env)
    subprocess.run(["rm", "-rf", str(runs)], check=True)
    return f"| {size:.0e} | {seconds:.1f} s | {peak / 2**20:.0f} MiB | (not run) | | | | |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[10**5, 10**6, 10**7])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--huge", action="store_true", help="also one stepmap run at 10^8")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(SRC)], check=True,
                   stdout=subprocess.DEVNULL)
    flint = flint_python()
    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; load {load:.1f}; "
          f"big ints: {os.environ.get('STEPMAP_BIGINT') or 'default (gmpy2)'}; "
          f"medians of {args.repeat} interleaved runs\n")
    print("| size | stepmap | stepmap peak | FLINT process | FLINT peak | time ratio | "
          "memory ratio | stored Input |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="stepmap-bench-flint-") as tmp:
        work = Path(tmp)
        for size in args.sizes:
            r = compare(size, args.repeat, work, flint)
            (sm_s, sm_m), (fl_s, fl_m) = r["stepmap"], r["flint"]
            print(f"| {size:.0e} | {sm_s:.2f} s | {sm_m / 2**20:.0f} MiB | {fl_s:.2f} s | "
                  f"{fl_m / 2**20:.0f} MiB | {sm_s / fl_s:.2f}× | {sm_m / fl_m:.2f}× | "
                  f"{r['input_bytes']} B |", flush=True)
        if args.huge:
            print(huge(10**8, work), flush=True)


if __name__ == "__main__":
    main()
