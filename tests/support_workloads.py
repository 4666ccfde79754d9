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


def flaky_square(item):
    """For stepmap.map tests: a module-level function (sent by reference) that fails on
    item [3, flag] while the file ``flag`` exists (a path in the item, not the environment:
    forkserver'd workers see the environment of when the fork server started)."""
    import os
    x, flag = item
    if x == 3 and os.path.exists(flag):
        raise RuntimeError("item 3 is not ready")
    return x * x
