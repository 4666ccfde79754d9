"""The registry of map engines that run inside this process's control (local, dask).

The AWS engines run the whole job remotely and live in :mod:`stepmap.aws`.
"""

from __future__ import annotations

import importlib

from ..errors import UnknownName, UsageError
from .base import Engine, Executor

MAP_ENGINES = {
    "local": ("stepmap.engines.local", "LocalEngine", None),
    "dask": ("stepmap.engines.dask", "DaskEngine", "dask"),
}
REMOTE_ENGINES = ("aws", "aws-emulated")
ALL_ENGINES = tuple(MAP_ENGINES) + REMOTE_ENGINES


def get_engine(name: str) -> Engine:
    if name not in MAP_ENGINES:
        raise UnknownName(f"unknown engine {name!r}: expected one of {', '.join(ALL_ENGINES)}")
    module_name, class_name, extra = MAP_ENGINES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"the {name} engine needs extra packages: pip install "
                         f"'stepmap[{extra}]' ({exc.name} is missing)") from None
    return getattr(module, class_name)()


__all__ = ["Engine", "Executor", "get_engine", "MAP_ENGINES", "REMOTE_ENGINES", "ALL_ENGINES"]
