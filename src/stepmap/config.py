"""A run's settings, typed and validated once: what ``runner.run`` / ``runner.resume`` take.

    RunConfig ── engine          "local" | "dask" | "aws" | "aws-emulated"
              ├─ policy          MapPolicy: retries, backoff, timeout, tolerance, batching
              ├─ engine_options  LocalOptions | DaskOptions | AwsOptions (the engine's own)
              └─ runs, run_id, items_from, items_format

Errors are :class:`~stepmap.errors.ConfigError` and name *fields* (``batch_size``), never
flags: the CLI (or any other front end) says which of its own options that field came from.
A field that cannot apply to the chosen engine is refused with where it is set instead
(no setting is ever dropped silently). ``to_dict`` / ``from_dict`` save the settings in the
run record, so a resumed run keeps them; ``with_overrides`` changes only what was given.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Union

from . import records
from .aws import DEFAULT_STACK
from .engines import ALL_ENGINES, MAP_ENGINES, REMOTE_ENGINES
from .errors import ConfigError, UnknownName
from .mapper import MapPolicy
from .records import dataclass, field

DEFAULT_RUNS_DIR = "stepmap-runs"
ITEM_FORMATS = ("json", "jsonl", "csv", "s3-listing")
MIN_MEMORY_MB = 64
#: Lambda's longest timeout: a compute call on the AWS engines cannot run longer.
LAMBDA_MAX_TIMEOUT = 900


@dataclass(frozen=True)
class LocalOptions:
    """The local process pool: worker count, per-worker address-space limit, start method."""

    workers: int | None = None
    memory_limit_mb: int | None = None
    start_method: str | None = None  # fork | spawn | forkserver (default: fork where it exists)

    def __post_init__(self) -> None:
        _check_workers(self.workers)
        _check_memory(self.memory_limit_mb)
        if self.start_method is not None:  # (multiprocessing only then: it costs a run)
            import multiprocessing
            methods = multiprocessing.get_all_start_methods()
            if self.start_method not in methods:
                raise ConfigError("start_method", f"must be one of {', '.join(methods)}, "
                                  f"got {str(self.start_method)[:40]!r}")


@dataclass(frozen=True)
class DaskOptions:
    """A Dask cluster: an existing scheduler, or a local cluster of this size."""

    scheduler: str | None = None
    workers: int | None = None
    memory_limit_mb: int | None = None

    def __post_init__(self) -> None:
        _check_workers(self.workers)
        _check_memory(self.memory_limit_mb)
        if self.scheduler is not None and not is_scheduler_address(self.scheduler):
            raise ConfigError("scheduler", "must be an address such as tcp://HOST:PORT, got "
                              f"{str(self.scheduler)[:60]!r}")
        if self.scheduler and (self.workers is not None or self.memory_limit_mb is not None):
            given = "workers" if self.workers is not None else "memory_limit_mb"
            raise ConfigError(given, "sizes the local Dask cluster stepmap starts; with "
                              "scheduler the cluster's own workers are used")


#: [scheme://]host:port; host a name, an IPv4 address or a bracketed IPv6 address.
_SCHEDULER = re.compile(r"(?:(?:tcp|tls|ws|wss|ucx)://)?(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}"
                        r"|\[[0-9A-Fa-f:.]{2,45}\]):([0-9]{1,5})")


def is_scheduler_address(address: object) -> bool:
    """A Dask scheduler address Client() can parse (checked first: a Client built from a
    malformed one fails, then stalls the exit for 30 s closing itself)."""
    match = _SCHEDULER.fullmatch(address) if isinstance(address, str) else None
    return match is not None and 1 <= int(match.group(1)) <= 65535


_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


@dataclass(frozen=True)
class AwsOptions:
    """Which deployed state machine runs the job (aws), and in which region."""

    stack_name: str = DEFAULT_STACK
    state_machine: str | None = None  # an ARN instead of the stack's output
    region: str | None = None  # None: as boto3 finds it (AWS_REGION, AWS_DEFAULT_REGION, profile)

    def __post_init__(self) -> None:
        if not isinstance(self.stack_name, str) or not _STACK_NAME.match(self.stack_name):
            raise ConfigError("stack_name", "must be a CloudFormation stack name (a letter, "
                              f"then letters, digits or '-'), got {str(self.stack_name)[:60]!r}")
        arn = self.state_machine
        if arn is not None and (not isinstance(arn, str) or not arn.startswith("arn:")
                                or ":stateMachine:" not in arn):
            raise ConfigError("state_machine", f"must be a state machine ARN, got "
                              f"{str(arn)[:60]!r}")
        if self.region is not None and (not isinstance(self.region, str)
                                        or not _REGION.match(self.region)):
            raise ConfigError("region", f"must be an AWS region such as us-east-1, got "
                              f"{str(self.region)[:40]!r}")


EngineOptions = Union[LocalOptions, DaskOptions, AwsOptions]
OPTIONS_FOR: dict[str, type] = {"local": LocalOptions, "dask": DaskOptions,
                                "aws": AwsOptions, "aws-emulated": AwsOptions}

POLICY_FIELDS = tuple(f.name for f in records.fields(MapPolicy))
#: The policy fields each engine applies. On ``aws`` the deployed state machine fixes them all
#: (retries, timeout, batching, tolerance are in its definition); ``aws-emulated`` synthesizes
#: its stack for each run from the fields it lists.
POLICY_APPLIES: dict[str, tuple[str, ...]] = {
    "local": POLICY_FIELDS, "dask": POLICY_FIELDS, "aws": (),
    "aws-emulated": ("batch_size", "max_concurrency", "tolerate_percent", "tolerate_count",
                     "retries", "backoff_seconds")}
#: Engine-option fields an engine's options type has but which cannot apply there.
OPTIONS_REFUSED = {"aws-emulated": ("stack_name", "state_machine", "region")}
#: Other settings that cannot apply to an engine, with where they are set instead.
TOP_REFUSED: dict[str, dict[str, str]] = {}  # (aws engines upload --items-from's items)
#: Short names a flat keyword factory accepts (what the CLI's flags are called).
ALIASES = {"backoff": "backoff_seconds", "tolerate": "tolerate_percent",
           "memory_limit": "memory_limit_mb"}
TOP_FIELDS = ("runs", "run_id", "items_from", "items_format")


def where_set(name: str, engine: str) -> str:
    """One phrase: where a field that cannot apply to ``engine`` is set instead."""
    if engine == "aws" and name in POLICY_FIELDS:
        return "the deployed state machine fixes it: set it with stepmap deploy"
    if engine == "aws-emulated" and name in POLICY_FIELDS:
        return "the emulated stack does not apply it yet (engines local and dask do)"
    if name in TOP_REFUSED.get(engine, {}):
        return TOP_REFUSED[engine][name]
    if name in ("stack_name", "state_machine", "region"):
        return ("aws-emulated synthesizes its own stack" if engine == "aws-emulated"
                else "it is an option of engine aws")
    if engine in REMOTE_ENGINES and name in ("workers", "memory_limit_mb"):
        return "Lambda runs the items: memory and concurrency are set by stepmap deploy"
    owners = [e for e in MAP_ENGINES if name in _option_names(e)]
    return f"it is an option of engine {' and '.join(owners) or '(none)'}"


def _option_names(engine: str) -> tuple[str, ...]:
    refused = OPTIONS_REFUSED.get(engine, ())
    return tuple(f.name for f in records.fields(OPTIONS_FOR[engine])
                 if f.name not in refused)


@dataclass(frozen=True)
class RunConfig:
    """Everything about how a run runs (not what it computes: that is the workload input)."""

    engine: str = "local"
    policy: MapPolicy = field(default_factory=MapPolicy)
    engine_options: EngineOptions | None = None  # None: the engine's defaults
    runs: str = DEFAULT_RUNS_DIR
    run_id: str | None = None
    items_from: str | None = None
    items_format: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ALL_ENGINES:
            raise UnknownName(f"unknown engine {str(self.engine)[:40]!r}: expected one of "
                              f"{', '.join(ALL_ENGINES)}")
        kind = OPTIONS_FOR[self.engine]
        if self.engine_options is None:
            object.__setattr__(self, "engine_options", kind())
        elif type(self.engine_options) is not kind:
            raise ConfigError("engine_options", f"of engine {self.engine} must be "
                              f"{kind.__name__}, got {type(self.engine_options).__name__}")
        if not isinstance(self.policy, MapPolicy):
            raise ConfigError("policy", f"must be a MapPolicy, got {type(self.policy).__name__}")
        self._check_applies()
        self._check_top()

    def _check_applies(self) -> None:
        default_policy, applies = MapPolicy(), POLICY_APPLIES[self.engine]
        for name in POLICY_FIELDS:
            if name not in applies and getattr(self.policy, name) != getattr(default_policy, name):
                raise self.refused(name)
        default_options = OPTIONS_FOR[self.engine]()
        for name in OPTIONS_REFUSED.get(self.engine, ()):
            if getattr(self.engine_options, name) != getattr(default_options, name):
                raise self.refused(name)
        for name in TOP_REFUSED.get(self.engine, {}):
            if getattr(self, name) is not None:
                raise self.refused(name)
        timeout = self.policy.timeout
        if self.engine == "aws-emulated" and (timeout is None or timeout > LAMBDA_MAX_TIMEOUT):
            raise ConfigError("timeout", f"must be at most {LAMBDA_MAX_TIMEOUT} seconds on "
                              f"{self.engine}: a Lambda function runs at most that long")

    def _check_top(self) -> None:
        if not isinstance(self.runs, str) or not self.runs.strip():
            raise ConfigError("runs", "must name a runs directory or s3://bucket/prefix")
        if self.run_id is not None:
            from .results import check_run_id
            check_run_id(self.run_id)
        if self.items_from is not None and (not isinstance(self.items_from, str)
                                            or not self.items_from):
            raise ConfigError("items_from", "must be a file path or s3:// location")
        if self.items_format is not None:
            if self.items_format not in ITEM_FORMATS:
                raise ConfigError("items_format", f"must be one of {', '.join(ITEM_FORMATS)}")
            if self.items_from is None:
                raise ConfigError("items_format", "says how to read items_from, which is not set")

    def refused(self, name: str) -> ConfigError:
        return ConfigError(name, f"cannot apply to engine {self.engine}: "
                           f"{where_set(name, self.engine)}")

    # ------------------------------------------------------------ construction
    @classmethod
    def build(cls, engine: str = "local", **fields: Any) -> "RunConfig":
        """From flat keywords (``retries=2, timeout=60, workers=4``); None means 'not given'.
        Short names (backoff, tolerate, memory_limit) are accepted as the CLI spells them."""
        policy, options, top = {}, {}, {}
        if engine not in ALL_ENGINES:
            RunConfig(engine=engine)  # raises UnknownName
        for given, value in fields.items():
            if value is None:
                continue
            name = ALIASES.get(given, given)
            if name in POLICY_FIELDS:
                policy[name] = value
            elif name in TOP_FIELDS:
                top[name] = value
            elif any(name in _option_names(e) for e in ALL_ENGINES) or name in (
                    f.name for f in records.fields(AwsOptions)):
                if name not in (f.name for f in records.fields(OPTIONS_FOR[engine])):
                    raise ConfigError(name, f"cannot apply to engine {engine}: "
                                      f"{where_set(name, engine)}")
                options[name] = value
            else:
                raise ConfigError(given, "is not a run setting")
        return cls(engine=engine, policy=MapPolicy(**policy),
                   engine_options=OPTIONS_FOR[engine](**options), **top)

    def settings(self) -> dict[str, Any]:
        """The flat fields that differ from their defaults (what ``build`` would need)."""
        flat: dict[str, Any] = {}
        for name, default in records.asdict(MapPolicy()).items():
            if getattr(self.policy, name) != default:
                flat[name] = getattr(self.policy, name)
        defaults = OPTIONS_FOR[self.engine]()
        for f in records.fields(self.engine_options):
            value = getattr(self.engine_options, f.name)
            if value != getattr(defaults, f.name):
                flat[f.name] = value
        for name in ("items_from", "items_format"):
            if getattr(self, name) is not None:
                flat[name] = getattr(self, name)
        return flat

    def with_overrides(self, explicit: Mapping[str, Any]) -> "RunConfig":
        """These settings, changed only where ``explicit`` gives a value (None: not given).
        Switching engines keeps the saved settings the new engine can apply."""
        given = {ALIASES.get(k, k): v for k, v in explicit.items() if v is not None}
        for fixed in ("run_id", "items_from", "items_format"):
            if fixed in given and given[fixed] != getattr(self, fixed):
                raise ConfigError(fixed, "is fixed when the run starts; it cannot change on "
                                  "resume")
        engine = given.pop("engine", self.engine)
        runs = given.pop("runs", self.runs)
        saved = self.settings()
        if engine != self.engine and engine in ALL_ENGINES:
            keep = (set(POLICY_APPLIES[engine]) | set(_option_names(engine))
                    | {"items_from", "items_format"})
            saved = {k: v for k, v in saved.items() if k in keep}
        if "scheduler" in given:  # a cluster of its own, which stepmap does not size
            saved = {k: v for k, v in saved.items() if k not in ("workers", "memory_limit_mb")}
        if given.keys() & {"workers", "memory_limit_mb"}:  # a local cluster of that size
            saved.pop("scheduler", None)
        return RunConfig.build(engine=engine, runs=runs, run_id=self.run_id,
                               **{**saved, **given})

    # ------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        """The settings as saved in run.json (the runs location is where run.json is)."""
        return {"engine": self.engine, "policy": records.asdict(self.policy),
                "engine_options": records.asdict(self.engine_options),
                "run_id": self.run_id, "items_from": self.items_from,
                "items_format": self.items_format}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, runs: str = DEFAULT_RUNS_DIR) -> "RunConfig":
        """Settings saved by ``to_dict`` (or by older stepmap versions, whose run.json had
        the same keys at its top level). Keys that never applied to the engine are dropped:
        they were not used when the run started either."""
        engine = data.get("engine") or "local"
        policy = data.get("policy") or {}
        options = data.get("engine_options") or {}
        kind = OPTIONS_FOR.get(engine, LocalOptions)
        names = {f.name for f in records.fields(kind)} - set(OPTIONS_REFUSED.get(engine, ()))
        return cls(engine=engine,
                   policy=MapPolicy(**{k: v for k, v in policy.items() if k in POLICY_FIELDS
                                       and k in POLICY_APPLIES.get(engine, ())}),
                   engine_options=kind(**{k: v for k, v in options.items() if k in names}),
                   runs=runs, run_id=data.get("run_id"), items_from=data.get("items_from"),
                   items_format=data.get("items_format"))


def _check_workers(workers: object) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= 1024):
        raise ConfigError("workers", f"must be between 1 and 1024, got {str(workers)[:40]}")


def _check_memory(memory_mb: object) -> None:
    if memory_mb is not None and (isinstance(memory_mb, bool) or not isinstance(memory_mb, int)
                                  or not MIN_MEMORY_MB <= memory_mb <= 16 * 1024 * 1024):
        raise ConfigError("memory_limit_mb", f"must be at least {MIN_MEMORY_MB} MB (and at "
                          f"most 16 TiB), got {str(memory_mb)[:40]}")
