"""stepmap: start -> map -> reduce jobs that run unchanged on a local process pool, on Dask,
or on AWS Step Functions Distributed Map.

The names a workload author needs are importable from here; everything else lives in the
module named after its concept (job, results, mapper, runner, engines, workloads, cli).
"""

from .errors import (IncompleteRunError, InvalidEvent, ItemFailed, ReduceFailed, StepmapError,
                     UsageError)
from .job import Param, Params, Start, Workload, batch_event, event_items, item_event

__all__ = ["Workload", "Start", "Param", "Params", "event_items", "item_event", "batch_event",
           "StepmapError", "UsageError", "InvalidEvent", "IncompleteRunError", "ItemFailed",
           "ReduceFailed",
           "map", "map_reduce", "Executor", "RunCancelled", "workload"]

#: The Python library's names, imported on first use so `import stepmap` stays cheap.
_LAZY = {"map": "stepmap.api", "map_reduce": "stepmap.api", "Executor": "stepmap.api",
         "RunCancelled": "stepmap.api",
         "workload": "stepmap.workloads.function"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stepmap' has no attribute {name!r}")
__version__ = "0.1.0"
