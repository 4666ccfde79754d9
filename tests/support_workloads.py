"""Small workloads the tests use (importable by worker processes: tests/ is on sys.path)."""

import json

from stepmap import Start, Workload, event_items


class Echo(Workload):
    """Each item's JSON text; reduce lists them (in no particular order: results files are
    read in completion order, as on AWS), to check which items arrived."""

    name = "echo"

    def start(self, event):
        return Start(params={"tag": event.get("tag", "t")}, items=[], count=0)

    def compute(self, event):
        return [json.dumps(item["index"], sort_keys=True) for item in event_items(event)]

    def reduce(self, outputs):
        return [text for output in outputs for text in output]


#: What a hostile workload error looks like; the dashboard must show it as text.
HOSTILE_TEXT = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


class Hostile(Workload):
    """Items are strings holding markup; item 1 fails with markup in its error message."""

    name = "hostile"

    def start(self, event):
        count = int(event.get("items", 3))
        return Start(params={}, items=[f"{HOSTILE_TEXT} #{i}" for i in range(count)],
                     count=count)

    def compute(self, event):
        for item in event_items(event):
            if item["index"].endswith("#1"):
                raise RuntimeError(f"bad item {item['index']}")
        return len(event_items(event))

    def reduce(self, outputs):
        return sum(outputs)


HOSTILE = Hostile()


class Limits(Workload):
    """Each item reports the memory limits its worker process runs under (the address-space
    rlimit, a Dask worker's memory limit), in MB; item ``flaky`` fails on its first attempt
    (markers in ``state_dir``), so a resume has something to recompute."""

    name = "limits"

    def start(self, event):
        count = event.get("items", 4)
        return Start(params={"state_dir": event["state_dir"], "flaky": event.get("flaky", -1)},
                     items=range(count), count=count)

    def compute(self, event):
        from pathlib import Path
        out = []
        for item in event_items(event):
            marker = Path(item["state_dir"]) / f"failed-{item['index']}"
            if item["index"] == item["flaky"] and not marker.exists():
                marker.touch()
                raise RuntimeError(f"item {item['index']} fails on its first attempt")
            out.append(_memory_limits())
        return out

    def reduce(self, outputs):
        return [limits for output in outputs for limits in output]


def _memory_limits():
    import resource
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    try:
        from distributed import get_worker
        dask_limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError):  # not in a Dask worker
        dask_limit = None
    mib = 1024 * 1024
    return {"address_space_mb": None if soft == resource.RLIM_INFINITY else soft // mib,
            "dask_mb": dask_limit // mib if dask_limit else None}


class NotDecimal(Workload):
    """Items 0..3; item 2's result is "12a" (a worker bug, or a hand-edited result), which a
    decimal reduce must refuse in one line rather than with a traceback or a total."""

    name = "not-decimal"

    def start(self, event):
        return Start(params={}, items=range(4), count=4)

    def compute(self, event):
        return "12a" if any(item["index"] == 2 for item in event_items(event)) else "7"

    def reduce(self, outputs):
        from stepmap.workloads import resolve
        return resolve("s3keys").reduce(outputs)


class Span(Workload):
    """Items first..n-1 as a range; each compute call returns the sum of its items' values,
    taken from the batch's range in O(1) (never item by item). With ``state_dir`` each call
    leaves a file naming the values it computed, and the call holding ``flaky`` fails the
    first time (to leave a run with a gap for resume)."""

    name = "span"

    def start(self, event):
        first, n = event.get("first", 0), event["n"]
        params = {"state_dir": event.get("state_dir", ""), "flaky": event.get("flaky", -1)}
        return Start(params=params, items=range(first, n), count=n - first)

    def compute(self, event):
        from pathlib import Path
        from stepmap.job import event_range

        values = event_range(event)
        items = event_items(event)
        if values is None:
            values = [item["index"] for item in items]
        shared = items[0]
        if shared["state_dir"]:
            state = Path(shared["state_dir"])
            if shared["flaky"] in values and not (state / "failed-once").exists():
                (state / "failed-once").touch()
                raise RuntimeError(f"value {shared['flaky']} fails once")
            (state / f"done-{values[0]}-{values[-1] + 1}").touch()
        if isinstance(values, range):
            return str((values.start + values.stop - 1) * len(values) // 2)
        return str(sum(values))

    def reduce(self, outputs):
        return str(sum(int(output) for output in outputs))


SPAN = Span()


def flaky_square(item):
    """For stepmap.map tests: a module-level function (sent by reference) that fails on
    item [3, flag] while the file ``flag`` exists (a path in the item, not the environment:
    forkserver'd workers see the environment of when the fork server started)."""
    import os
    x, flag = item
    if x == 3 and os.path.exists(flag):
        raise RuntimeError("item 3 is not ready")
    return x * x
