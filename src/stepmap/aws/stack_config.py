"""What `stepmap deploy` fixes in a stack, validated: :class:`StackConfig`.

No CDK here: the driver, the emulator and the template cache read a config (and hash it)
without starting jsii. ``stack.py`` turns a config into constructs.
"""

from __future__ import annotations

import json
import math
import re

from .names import DEFAULT_BACKOFF_SECONDS, DEFAULT_RETRIES
from ..errors import UsageError
from ..records import asdict, dataclass, fields
from ..workloads import is_builtin

#: The Lambda Python runtimes a stack may use (stack.py maps them to CDK's).
RUNTIMES = ("python3.12", "python3.13", "python3.14")
LATEST_RUNTIME = "python3.14"  # what cdk-nag's AwsSolutions-L1 calls current
DEFAULT_EFS_MOUNT_PATH = "/mnt/efs"
#: Lambda's own rule for FileSystemConfigs.LocalMountPath (CDK checks the same at synth)
MOUNT_PATH = re.compile(r"^/mnt/[a-zA-Z0-9\-_.]{1,155}$")
#: resource IDs, checked by their prefix so that swapped options fail here, not in CloudFormation
_IDS = {"efs_file_system_id": ("--efs-file-system", "fs-"),
        "efs_access_point_id": ("--efs-access-point", "fsap-"),
        "vpc_id": ("--vpc", "vpc-"), "security_group_id": ("--security-group", "sg-")}
_ID = re.compile(r"^[a-z]+-([0-9a-f]{8}|[0-9a-f]{17})$")  # AWS: 8 or 17 hex digits
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: built-in workloads whose items are S3 listing entries ({"Key", "Size", "ETag", ...})
LISTING_WORKLOADS = frozenset({"s3copy"})


@dataclass(frozen=True)
class StackConfig:
    """Deploy-time settings. The workload is fixed here: an execution's input chooses
    parameters, never code."""

    workload: str = "s3keys"
    memory_mb: int = 4096
    timeout_seconds: int = 900
    max_concurrency: int = 1000
    tolerated_failure_percentage: float = 0.0
    tolerated_failure_count: int = 0
    batch_size: int = 0  # ItemBatcher MaxItemsPerBatch; 0 = one item per child execution
    # the compute task's retry of any error (a workload's own exception included), as the
    # local engine retries a failed call: MaxAttempts, and the first delay (BackoffRate 2)
    retries: int = DEFAULT_RETRIES
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    retain_bucket: bool = False
    runtime: str = LATEST_RUNTIME
    # EFS: mount an existing access point into the start and compute functions, which then
    # run in an existing VPC (private subnets, a security group that reaches the mount
    # targets on 2049). All five IDs together, or none.
    efs_file_system_id: str = ""
    efs_access_point_id: str = ""
    efs_mount_path: str = DEFAULT_EFS_MOUNT_PATH
    vpc_id: str = ""
    subnet_ids: tuple[str, ...] = ()
    security_group_id: str = ""
    # the Distributed Map lists s3://source_bucket/source_prefix itself (S3ObjectsItemReader)
    source_bucket: str = ""
    source_prefix: str = ""
    # a requirements.txt whose Lambda (arm64) wheels go into the code asset (requirements.py)
    requirements: str = ""

    def __post_init__(self):
        subnets = self.subnet_ids
        if isinstance(subnets, str):  # "subnet-a,subnet-b" (e.g. from cdk -c)
            subnets = [s.strip() for s in subnets.split(",") if s.strip()]
        _need(isinstance(subnets, (list, tuple)) and all(isinstance(s, str) for s in subnets),
              "--subnets must be a comma-separated list of subnet IDs")
        object.__setattr__(self, "subnet_ids", tuple(subnets))  # hashable, like every field
        _need(128 <= self.memory_mb <= 10240, "--memory must be between 128 and 10240 MB")
        _need(1 <= self.timeout_seconds <= 900, "--timeout must be 1-900 seconds (Lambda's limit)")
        _need(0 <= self.max_concurrency <= 10000, "--max-concurrency must be 0-10000 (0 = AWS max)")
        _need(0 <= self.tolerated_failure_percentage <= 100, "--tolerate must be 0-100 percent")
        _need(self.tolerated_failure_count >= 0, "--tolerate-count must not be negative")
        _need(0 <= self.batch_size <= 100_000_000, "--batch-size must not be negative")
        _need(isinstance(self.retries, int) and 0 <= self.retries <= 99,
              "--retries must be between 0 and 99 (Step Functions' MaxAttempts)")
        _need(isinstance(self.backoff_seconds, (int, float))
              and 0 <= self.backoff_seconds <= 3600,
              "--backoff must be between 0 and 3600 seconds")
        _need(self.runtime in RUNTIMES, f"--runtime must be one of {', '.join(RUNTIMES)}")
        _need(bool(self.workload), "--workload must name a workload")
        for name in ("efs_file_system_id", "efs_access_point_id", "efs_mount_path", "vpc_id",
                     "security_group_id", "source_bucket", "source_prefix"):
            _need(isinstance(getattr(self, name), str), f"stack setting {name} must be a string")
        self._check_efs()
        self._check_item_source()

    @property
    def retry_interval_seconds(self) -> int:
        """The deployed IntervalSeconds: Step Functions takes whole seconds, at least 1, so
        the backoff is rounded up (with full jitter the first wait is uniform in [0, this])."""
        return max(1, math.ceil(self.backoff_seconds))

    @property
    def efs(self) -> bool:
        return bool(self.efs_file_system_id)

    @property
    def item_source(self) -> str:
        """``s3://bucket/prefix`` the map lists, or "" without an item source."""
        return f"s3://{self.source_bucket}/{self.source_prefix}" if self.source_bucket else ""

    def _check_efs(self) -> None:
        given = {"--efs-file-system": self.efs_file_system_id,
                 "--efs-access-point": self.efs_access_point_id, "--vpc": self.vpc_id,
                 "--subnets": self.subnet_ids, "--security-group": self.security_group_id}
        missing = [flag for flag, value in given.items() if not value]
        if len(missing) != len(given):
            _need(not missing, f"{', '.join(given)} go together: missing {', '.join(missing)}")
        else:
            _need(self.efs_mount_path == DEFAULT_EFS_MOUNT_PATH,
                  "--efs-mount-path needs --efs-file-system (and the other EFS options)")
            return
        for name, (flag, prefix) in _IDS.items():
            value = getattr(self, name)
            _need(value.startswith(prefix) and bool(_ID.fullmatch(value)),
                  f"{flag} must be an ID like {prefix}0123456789abcdef0 (8 or 17 hex digits), "
                  f"got {value[:60]!r}")
        for subnet in self.subnet_ids:
            _need(subnet.startswith("subnet-") and bool(_ID.fullmatch(subnet)),
                  "--subnets must be subnet IDs like subnet-0123456789abcdef0, got "
                  f"{subnet[:60]!r}")
        _need(len(set(self.subnet_ids)) == len(self.subnet_ids), "--subnets lists a subnet twice")
        _need(len(self.subnet_ids) <= 16, "--subnets: Lambda takes at most 16 subnets")
        _need(bool(MOUNT_PATH.fullmatch(self.efs_mount_path)),
              "--efs-mount-path must be /mnt/NAME (one level: letters, digits, '-', '_', '.'), "
              f"got {self.efs_mount_path[:60]!r}")

    def _check_item_source(self) -> None:
        if not self.source_bucket:
            _need(not self.source_prefix, "a source prefix needs a source bucket (--item-source)")
            return
        _need(bool(_BUCKET_NAME.fullmatch(self.source_bucket)) and ".." not in self.source_bucket,
              f"--item-source: {self.source_bucket[:70]!r} is not an S3 bucket name")
        _need(len(self.source_prefix.encode("utf-8")) <= 1024,
              "--item-source: the prefix is longer than an S3 key may be")
        _need(not is_builtin(self.workload) or self.workload in LISTING_WORKLOADS,
              f"--item-source gives each child an S3 listing entry ({{\"Key\", \"Size\", "
              f"\"Etag\", ...}}); workload {self.workload} does not take those (use "
              f"{', '.join(sorted(LISTING_WORKLOADS))} or a module:attribute workload)")

    def to_context(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_context(cls, value) -> "StackConfig":
        data = json.loads(value) if isinstance(value, str) else dict(value or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        _need(not unknown, f"unknown stack settings: {', '.join(unknown)}")
        return cls(**data)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def parse_item_source(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix); the prefix may be empty (whole bucket)."""
    _need(isinstance(url, str) and url.startswith("s3://"),
          f"--item-source must be an s3://bucket/prefix URL, got {str(url)[:70]!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    _need(bool(bucket), "--item-source must name a bucket: s3://bucket/prefix")
    return bucket, prefix


