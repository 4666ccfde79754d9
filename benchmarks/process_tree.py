"""Run one command and measure it whole: wall seconds and the peak summed RSS of its process
tree (the command and every child it starts, sampled every 20 ms with psutil), so a tool's
worker processes count as well as its parent. Shared by the benchmarks that compare memory."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import IO

import psutil


def run_measured(cmd: list[str], *, env: dict | None = None,
                 stdout: IO[bytes] | int = subprocess.PIPE,
                 pss: list[int] | None = None) -> tuple[float, int, bytes, bytes, int]:
    """(seconds, peak tree RSS in bytes, stdout, stderr, exit code) of one run. With ``pss``
    (a list), its first element becomes the peak of the tree's summed proportional set size:
    a page shared by a forked worker and its parent counts once, not twice as in RSS."""
    peak, stop = [0], threading.Event()
    began = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)

    def sample() -> None:
        while not stop.is_set():
            try:
                tree = [proc] + proc.children(recursive=True)
                peak[0] = max(peak[0], sum(_rss(p) for p in tree))
                if pss is not None:
                    pss[0] = max(pss[0], sum(_pss(p) for p in tree))
            except psutil.NoSuchProcess:
                pass
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - began
    stop.set()
    sampler.join()
    return seconds, peak[0], out or b"", err or b"", proc.returncode


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def _pss(process: psutil.Process) -> int:
    """From /proc/PID/smaps_rollup (one summary; psutil's memory_full_info reads every
    mapping of smaps, which cost the copiers measurable CPU at this sampling rate)."""
    try:
        with open(f"/proc/{process.pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
