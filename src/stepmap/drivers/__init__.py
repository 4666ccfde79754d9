"""The registry of run drivers: one per engine family, imported only when used.

    local, dask        -> stepmap.drivers.map_driver.MapDriver   (mapper.run_map on an Executor)
    aws, aws-emulated  -> stepmap.aws.driver.StepFunctionsDriver (executions of a state machine)
"""

from __future__ import annotations

import importlib

from ..engines import ALL_ENGINES
from ..errors import UnknownName
from .base import Driver, ProgressFn, RunJob, RunReport

DRIVERS = {
    "local": ("stepmap.drivers.map_driver", "MapDriver"),
    "dask": ("stepmap.drivers.map_driver", "MapDriver"),
    "aws": ("stepmap.aws.driver", "StepFunctionsDriver"),
    "aws-emulated": ("stepmap.aws.driver", "StepFunctionsDriver"),
}


def for_engine(name: str) -> Driver:
    """The driver of engine ``name`` (a missing optional dependency surfaces when the
    driver opens its engine, as a one-line UsageError naming the extra)."""
    if name not in DRIVERS:
        raise UnknownName(f"unknown engine {name!r}: expected one of {', '.join(ALL_ENGINES)}")
    module_name, class_name = DRIVERS[name]
    driver: Driver = getattr(importlib.import_module(module_name), class_name)()
    return driver


__all__ = ["Driver", "RunJob", "RunReport", "ProgressFn", "for_engine", "DRIVERS"]
