"""stepmap: start -> map -> reduce jobs that run unchanged on a local process pool, on Dask,
or on AWS Step Functions Distributed Map.

The names a workload author needs are importable from here; everything else lives in the
module named after its concept (job, results, mapper, runner, engines, workloads, cli).
"""

from .errors import IncompleteRunError, InvalidEvent, StepmapError, UsageError
from .job import Param, Params, Start, Workload, batch_event, event_items, item_event

__all__ = ["Workload", "Start", "Param", "Params", "event_items", "item_event", "batch_event",
           "StepmapError", "UsageError", "InvalidEvent", "IncompleteRunError"]
__version__ = "0.1.0"
