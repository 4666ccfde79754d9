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
