"""The benchmarks' tiny workload: index² per item, a step that does nothing, so only the
engine and stepmap's own start-up are measured. A module of its own, so that a ``stepmap run
benchmarks.tiny:TINY`` process imports no more than a user's one-file workload would."""

from __future__ import annotations

from stepmap.job import Param, Params, Start, Workload, event_items


class Tiny(Workload):
    name = "tiny"
    summary = "index² per item: a step that does nothing, so only the engine is measured"
    parameters = {"items": Param("number of items (default 10,000)", int)}

    def start(self, event: dict) -> Start:
        count = Params(event).integer("items", default=10_000, low=1, high=100_000_000)
        return Start(params={}, items=range(count), count=count, summary=f"{count} tiny items")

    def compute(self, event: dict) -> int:
        return sum(item["index"] ** 2 for item in event_items(event))

    def reduce(self, outputs) -> int:
        return sum(outputs)


TINY = Tiny()
