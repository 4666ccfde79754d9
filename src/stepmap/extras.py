"""Optional dependencies: a missing one is one line naming the extra to install, never a
traceback. Each command that needs an extra calls :func:`require` before it does any work."""

from __future__ import annotations

import importlib

from .errors import UsageError


def require(module: str, extra: str, purpose: str) -> None:
    """Import ``module`` now; if it (or one of its own dependencies) is missing, raise a
    UsageError: '<purpose> needs <module>: pip install 'stepmap[<extra>]''."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        missing = f" ({exc.name} is missing)" if exc.name and exc.name != module else ""
        raise UsageError(f"{purpose} needs {module}{missing}: pip install "
                         f"'stepmap[{extra}]'") from None
