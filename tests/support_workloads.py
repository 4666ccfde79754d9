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
