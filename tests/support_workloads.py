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
