"""The exceptions stepmap raises, and the exit code each one maps to.

    StepmapError                  base of everything below; .exit_code for the CLI
     ├── UsageError          (2)  bad input: an option, the run input, a workload parameter
     │    ├── InvalidEvent   (2)  a step's event (a Lambda handler's input) is malformed
     │    ├── UnknownName    (2)  no such workload, engine, alphabet, method or run
     │    ├── StartFailed    (2)  the workload's start raised (the original is its __cause__):
     │                            nothing was run
     │    └── ConfigError    (2)  a run setting is out of range or cannot apply to the engine
     ├── ResultsError        (2)  the results store is unusable or its files are corrupt
     ├── RunLockedError      (2)  another process is already working on this run
     ├── EngineError         (1)  an engine could not start or broke down
     │    └── EngineLost     (1)  the engine went away mid-run (a lost Dask scheduler):
     │                            the run stops as INTERRUPTED, resumable
     ├── IncompleteRunError  (1)  not every item succeeded, so there is no total
     ├── ReduceFailed        (1)  the workload's reduce raised (the original error is its
     │                            __cause__); every result is kept: resumable once it is fixed
     └── ItemFailed          (1)  stepmap.map: an item failed after its retries (carries the
                                  item, the original error type and message, the worker's
                                  traceback as __cause__; also an instance of the original
                                  type when that is a built-in exception)

A failing compute step is *not* an exception at this level: the engine records it as a
FAILED result (error name, message, traceback) and the tolerated-failure policy decides
whether the run goes on. Partial failure is data; only the final verdict raises.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class StepmapError(Exception):
    """Base class; str(error) is the one line the CLI prints."""

    exit_code = EXIT_INCOMPLETE


class UsageError(StepmapError):
    exit_code = EXIT_USAGE


class InvalidEvent(UsageError):
    """A step received an event it cannot interpret (typed error for Lambda handlers)."""


class UnknownName(UsageError):
    pass


class StartFailed(UsageError):
    """The workload's start step raised: nothing was run."""


def raised_at(exc: BaseException) -> str:
    """" (at FILE:LINE in FUNCTION)", where ``exc`` was raised: a one-line error about a
    step's own exception still says where to look."""
    import traceback  # only now: its linecache and tokenize imports cost every run
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" \
        if frames else ""


class ConfigError(UsageError):
    """A run setting is invalid; ``field`` names it (the CLI shows the flag instead), and
    ``str()`` is the one line with the field's name."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class ResultsError(StepmapError):
    exit_code = EXIT_USAGE


class RunLockedError(StepmapError):
    exit_code = EXIT_USAGE


class EngineError(StepmapError):
    exit_code = EXIT_INCOMPLETE


class EngineLost(EngineError):
    """The engine is gone mid-run (e.g. its scheduler): the map run stops, what was computed
    is kept, the rest is recorded PENDING, and the run ends INTERRUPTED (exit 1)."""


class IncompleteRunError(StepmapError):
    """Raised by the reduce step when results are missing; carries what is missing."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, message: str, *, failed: int = 0, pending: int = 0,
                 missing: list | None = None, run_id: str | None = None):
        super().__init__(message)
        self.failed = failed
        self.pending = pending
        self.missing = missing or []
        self.run_id = run_id


class ReduceFailed(StepmapError):
    """The workload's reduce (stepmap.map_reduce's reduce function) raised."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, message: str, *, run_id: str | None = None):
        super().__init__(message)
        self.run_id = run_id


class RemoteTraceback(Exception):
    """The worker's traceback, as text: set as an ItemFailed's ``__cause__`` so it prints."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


class ItemFailed(StepmapError):
    """An item of a function map failed after its retries (or did not run at all)."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, message: str, *, item=None, position: int = -1, error_type: str = "",
                 error_message: str = "", remote_traceback: str = "", run_id: str = "",
                 attempts: int = 0):
        super().__init__(message)
        self.item, self.position, self.run_id = item, position, run_id
        self.error_type, self.error_message = error_type, error_message
        self.remote_traceback, self.attempts = remote_traceback, attempts
