"""chaos: a diagnostic workload that misbehaves on purpose, to try an engine's fault handling.

Items are 0..items-1; each computes index² (a batch returns the sum as a decimal string) and
the total is Σ i² — so a wrong or incomplete total is easy to spot. ``faults`` maps a fault
to the item indices that suffer it:

    raise   the step raises RuntimeError          exit   the worker calls os._exit(3)
    kill    the worker SIGKILLs itself            hang   the step sleeps for an hour
    oom     the step allocates memory until it fails (use with --memory-limit)
    flaky   raises on the first attempt only (needs state_dir)
    stubborn  raises on its first 3 attempts (needs state_dir): with the default 2 retries
            a run fails it, and a resume heals it
    gated   waits (up to an hour) until a file named ``open`` exists in state_dir: holds a
            run in progress for as long as a test or a demo needs

``sleep`` adds a delay per item; with ``state_dir`` every computation leaves a marker file
when it starts (``start-<index>-<pid>-<n>``) and when it succeeds (``done-<index>-<pid>-<n>``),
which lets tests prove what was (not) recomputed, and which process was running what.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Iterable

from .. import bigint
from ..errors import InvalidEvent, UsageError
from ..job import Param, Params, Start, Workload, event_items

FAULTS = ("raise", "exit", "kill", "hang", "oom", "flaky", "stubborn", "gated")
#: attempts a "stubborn" item fails: one whole run with the default 2 retries
STUBBORN_ATTEMPTS = 3


class Chaos(Workload):
    name = "chaos"
    summary = "diagnostic: index² per item, with injected faults (raise, exit, kill, hang, oom)"
    parameters = {
        "items": Param("number of items (default 100)", int),
        "sleep": Param("seconds to sleep per item (default 0)"),
        "faults": Param('JSON object: fault -> list of item indices, e.g. {"raise": [3]}'),
        "state_dir": Param("directory for attempt/completion markers"),
    }

    def start(self, event: dict) -> Start:
        params = Params(event)
        params.reject_unknown(self.parameters)
        count = params.integer("items", default=100, low=1, high=10_000_000)
        sleep = event.get("sleep", 0)
        if isinstance(sleep, str):
            try:
                sleep = bigint.flag_float(sleep)  # ASCII, finite
            except ValueError:
                raise UsageError(f"'sleep' must be a number of seconds, got {sleep!r}") from None
        if isinstance(sleep, bool) or not isinstance(sleep, (int, float)) or not 0 <= sleep <= 3600:
            raise UsageError("'sleep' must be a number of seconds from 0 to 3600")
        faults = event.get("faults", {})
        if isinstance(faults, str):
            import json
            try:
                faults = json.loads(faults)
            except ValueError:
                raise UsageError("'faults' must be a JSON object") from None
        if not isinstance(faults, dict) or not all(
                k in FAULTS and isinstance(v, list) and all(isinstance(i, int) for i in v)
                for k, v in faults.items()):
            raise UsageError(f"'faults' must map some of {', '.join(FAULTS)} to index lists")
        job: dict[str, Any] = {"sleep": sleep, "faults": faults}
        state_dir = params.string("state_dir")
        if state_dir:
            job["state_dir"] = state_dir
        return Start(params=job, items=range(count), count=count,
                     summary=f"{count} items, faults {faults or 'none'}")

    def compute(self, event: dict) -> str:
        total = 0
        for item in event_items(event):
            index = item.get("index")
            if isinstance(index, bool) or not isinstance(index, int):
                raise InvalidEvent(f"'index' must be an integer, got {index!r:.40}")
            _misbehave(index, item)
            total += index * index
        return bigint.to_decimal(total)

    def reduce(self, outputs: Iterable) -> str:
        return bigint.to_decimal(sum(bigint.from_decimal(o) for o in outputs))


def _misbehave(index: int, item: dict) -> None:
    faults = item.get("faults") or {}
    state = Path(item["state_dir"]) if item.get("state_dir") else None
    if state is not None:  # e.g. under a Lambda function's /tmp, new in each environment
        state.mkdir(parents=True, exist_ok=True)
        (state / f"start-{index}-{os.getpid()}-{time.monotonic_ns()}").touch()
    if item.get("sleep"):
        time.sleep(float(item["sleep"]))
    if index in faults.get("flaky", []):
        marker = state / f"attempt-{index}" if state else None
        if marker is not None and not marker.exists():
            marker.touch()
            raise RuntimeError(f"flaky item {index} fails on its first attempt")
    if index in faults.get("stubborn", []) and state is not None:
        tried = len(list(state.glob(f"stubborn-{index}-*")))
        if tried < STUBBORN_ATTEMPTS:
            (state / f"stubborn-{index}-{tried}-{os.getpid()}-{time.monotonic_ns()}").touch()
            raise RuntimeError(f"stubborn item {index} fails attempt {tried + 1} of "
                               f"{STUBBORN_ATTEMPTS}")
    if index in faults.get("gated", []) and state is not None:
        deadline = time.monotonic() + 3600
        while not (state / "open").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    if index in faults.get("raise", []):
        raise RuntimeError(f"item {index} was told to raise")
    if index in faults.get("exit", []):
        os._exit(3)
    if index in faults.get("kill", []):
        os.kill(os.getpid(), signal.SIGKILL)
    if index in faults.get("hang", []):
        time.sleep(3600)
    if index in faults.get("oom", []):
        hog = []
        while True:
            hog.append(bytearray(64 * 1024 * 1024))
    if state is not None:
        (state / f"done-{index}-{os.getpid()}-{time.monotonic_ns()}").touch()


WORKLOAD = Chaos()
