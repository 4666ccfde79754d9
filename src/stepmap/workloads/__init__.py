"""The workload registry: built-in names, or any ``module:attribute`` the user names.

A user module is imported only because the user named it (on the command line, or at
deploy time for AWS); nothing read from a run input or a results directory selects code.
"""

from __future__ import annotations

import functools
import importlib

from ..errors import UnknownName, UsageError
from ..job import Workload

BUILTIN = {
    "s3keys": "stepmap.workloads.s3keys:WORKLOAD",
    "chaos": "stepmap.workloads.chaos:WORKLOAD",
    "s3copy": "stepmap.workloads.s3copy:WORKLOAD",
}


def is_builtin(ref: str) -> bool:
    return ref in BUILTIN


def resolve(ref: str) -> Workload:
    """A workload by built-in name, 'module:attribute' (a Workload instance or subclass) or
    'fn:module:function' (a function, see :mod:`stepmap.workloads.function`). A ref that
    carries its own pickled function (stepmap.api's) is rebuilt from that, never imported."""
    if hasattr(ref, "payload"):  # a function.FunctionRef (a str that carries its function)
        return ref.load()  # type: ignore[attr-defined]
    return _resolve_named(ref)


@functools.cache
def _resolve_named(ref: str) -> Workload:
    if ref.startswith("fn:"):
        from .function import from_name
        return from_name(ref)
    target = BUILTIN.get(ref, ref)
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise UnknownName(f"unknown workload {ref!r}: expected one of {', '.join(BUILTIN)} "
                          "or module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownName(f"cannot import workload module {module_name!r}: {exc}") from None
    try:
        obj = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise UnknownName(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(obj, type) and issubclass(obj, Workload):
        obj = obj()
    if not isinstance(obj, Workload):
        raise UsageError(f"{ref!r} is not a stepmap Workload (subclass stepmap.Workload)")
    return obj


def available() -> dict[str, Workload]:
    return {name: resolve(name) for name in BUILTIN}
