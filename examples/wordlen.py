"""The workload from the README's "Writing a workload" section (tests run it)."""

from stepmap import Param, Start, Workload, event_items


class WordLengths(Workload):
    name = "wordlen"
    summary = "total length of some words"
    parameters = {"words": Param("comma-separated words")}

    def start(self, event):                      # validate input, emit items
        words = event.get("words", "").split(",")
        return Start(params={}, items=words, count=len(words))

    def compute(self, event):                    # one item or one batch -> JSON result
        return str(sum(len(item["index"]) for item in event_items(event)))

    def reduce(self, outputs):                   # results, read back from the store
        return str(sum(int(o) for o in outputs))
