"""What the Step Functions driver keeps in run.json (key ``aws``) besides the common record:
the bucket, the policy as deployed, the executions and map runs of the run, an uploaded item
list, and whether a resume can work."""

from __future__ import annotations

from typing import Any

from .names import RESULTS_PREFIX
from .. import records
from ..records import dataclass, field
from ..results import RunRecord


@dataclass
class AwsState:
    """What the driver keeps in run.json (key ``aws``) besides the common record."""

    bucket: str = ""
    results_prefix: str = RESULTS_PREFIX
    deployed: dict[str, Any] = field(default_factory=dict)  # asl.deployed_settings
    executions: list[str] = field(default_factory=list)
    map_runs: list[dict[str, str]] = field(default_factory=list)  # ResultWriter manifests
    items_key: str | None = None  # the uploaded --items-from list, in the bucket
    resumable: bool = True

    @classmethod
    def of(cls, record: RunRecord) -> "AwsState":
        saved = record.extra.get("aws")
        names = {f.name for f in records.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names}) \
            if isinstance(saved, dict) else cls()

    def save(self, record: RunRecord) -> None:
        record.extra["aws"] = records.asdict(self)
