"""s3keys benchmarks: the original multinomial formula vs the fast methods, and the whole CLI
against a bare Python process computing the same recurrence. Everything is measured in this
run on this machine; the table reports ratios against baselines measured alongside.

    .venv/bin/python benchmarks/bench_s3keys.py            # full (multinomial 1024 ≈ 30 s)
    .venv/bin/python benchmarks/bench_s3keys.py --quick    # sizes 256 and 512 only
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.set_int_max_str_digits(0)

from stepmap.workloads import s3keys_math as maths  # noqa: E402

ARTICLE = maths.ALPHABETS["article"]

BARE = """
import sys
sys.set_int_max_str_digits(0)
c1, c2, c3, c4 = 128, 1863, 42451, 78341
f = [1, 0, 0, 0]   # f(n), f(n-1), f(n-2), f(n-3)
total = 0
for n in range({size}):
    total += f[0]
    f = [c1*f[0] + c2*f[1] + c3*f[2] + c4*f[3], f[0], f[1], f[2]]
print(total)
"""


def timed(fn, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def methods_table(sizes: list[int]) -> list[str]:
    rows = ["| size | multinomial, largest item f(size-1) | jump, f(size-1) | speed-up | "
            "jump, Σ of all items | closed form, Σ of all items |",
            "|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        n = size - 1
        slow = timed(lambda: maths.f_multinomial(n, ARTICLE))
        fast = timed(lambda: maths.f_at(n, ARTICLE), repeat=20)
        whole_jump = timed(lambda: maths.sum_jump(0, size, ARTICLE), repeat=5)
        whole_closed = timed(lambda: maths.sum_closed(0, size, ARTICLE), repeat=20)
        assert maths.f_multinomial(n, ARTICLE) == maths.f_at(n, ARTICLE)
        rows.append(f"| {size} | {slow:.3f} s | {fast * 1e3:.3f} ms | {slow / fast:,.0f}× | "
                    f"{whole_jump * 1e3:.2f} ms | {whole_closed * 1e3:.3f} ms |")
        print(rows[-1], flush=True)
    return rows


def cli_table(size: int, repeat: int) -> list[str]:
    # as installed: byte-compiled (PYTHONDONTWRITEBYTECODE would otherwise recompile each start)
    src = str(Path(__file__).resolve().parent.parent / "src")
    subprocess.run([sys.executable, "-m", "compileall", "-q", src], check=True,
                   stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as runs:
        cli = [sys.executable, "-m", "stepmap", "run", "s3keys", "--size", str(size), "--quiet",
               "--results", runs]
        bare = [sys.executable, "-c", BARE.format(size=size)]
        outputs = {}

        def run(cmd, key):
            outputs[key] = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

        cli_times, bare_times = [], []
        for _ in range(repeat):  # interleaved, so both see the same machine load
            cli_times.append(timed(lambda: run(cli, "cli")))
            bare_times.append(timed(lambda: run(bare, "bare")))
    assert outputs["cli"].strip() == outputs["bare"].strip(), "the two disagree"
    cli_median, bare_median = statistics.median(cli_times), statistics.median(bare_times)
    return ["| command (size %d, median of %d) | seconds | ratio |" % (size, repeat),
            "|---|---:|---:|",
            f"| bare `python -c` recurrence loop (baseline) | {bare_median:.3f} | 1.0× |",
            f"| `stepmap run s3keys --size {size}` (local engine, results store) | "
            f"{cli_median:.3f} | {cli_median / bare_median:.1f}× |"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"big-integer backend: {maths.BACKEND}\n")
    rows = methods_table([256, 512] if args.quick else [256, 512, 1024])
    print()
    print("\n".join(rows))
    print()
    print("\n".join(cli_table(1024, args.repeat)))


if __name__ == "__main__":
    main()
