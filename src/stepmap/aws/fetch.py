"""An AWS run's results, kept with the run: its map runs' ResultWriter manifests, the run
directory's manifest listing their files, and what a resume has left to run.

    execution ─► ListMapRuns ─► s3://BUCKET/<prefix>/<map-run-id>/manifest.json
      aws:           <run>/manifest.json lists the bucket's result files as s3:// URLs
      aws-emulated:  the files are copied into <run>/ (the emulated bucket ends with the
                     process) and <run>/manifest.json lists the copies

Either way ``stepmap runs``, ``stepmap report`` and ``stepmap resume`` read a run through
the results store (RunStore) as they read a local one: every SUCCEEDED file of every map
run of the run, and the FAILED/PENDING files of the latest only (a resume re-ran the others).
"""

from __future__ import annotations

import json
from typing import Iterable

from ..mapper import Intervals
from ..verify import Expected, check_results, entry_positions
from ..results import STATUSES, ResultFile, RunStore
from .names import POSITION_KEY
from .target import Target, error_code


def map_run_manifests(target: Target, execution_arn: str) -> list[dict]:
    """{"Bucket", "Key"} of the manifest of each of the execution's map runs that wrote one."""
    found = []
    for run in target.sfn.list_map_runs(executionArn=execution_arn).get("mapRuns", []):
        map_run_id = run["mapRunArn"].rsplit(":", 1)[-1]
        key = f"{target.results_prefix}/{map_run_id}/manifest.json"
        if _exists(target.s3, target.bucket, key):
            found.append({"Bucket": target.bucket, "Key": key})
    return found


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore's ClientError: 404 means "not written"
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def read_manifest(s3, details: dict) -> dict:
    body = s3.get_object(Bucket=details["Bucket"], Key=details["Key"])["Body"].read()
    manifest = json.loads(body)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("ResultFiles"), dict):
        raise ValueError(f"s3://{details['Bucket']}/{details['Key']} is not a manifest")
    return manifest


def link_results(store: RunStore, s3, manifests: list[dict], map_run_arn: str) -> None:
    """aws: the run directory's manifest lists the bucket's files where they are."""
    files: list[ResultFile] = []
    for n, details in enumerate(manifests):
        manifest = read_manifest(s3, details)
        latest = n == len(manifests) - 1
        for status in STATUSES:
            if status == "SUCCEEDED" or latest:
                files += [ResultFile(f"s3://{details['Bucket']}/{key}", status, 0)
                          for key in RunStore.manifest_keys(manifest, status)]
    store.write_manifest(files, map_run_arn=map_run_arn)


def copy_results(store: RunStore, s3, details: dict, map_run_arn: str) -> None:
    """aws-emulated: copy one map run's result files into the run directory (numbered after
    the files already there), then list every SUCCEEDED file there and this map run's
    FAILED/PENDING ones, and drop earlier FAILED/PENDING files (their items were re-run)."""
    manifest = read_manifest(s3, details)
    numbers = store.next_numbers()
    written = []
    for status in STATUSES:
        for key in RunStore.manifest_keys(manifest, status):
            entries = json.loads(s3.get_object(Bucket=details["Bucket"], Key=key)["Body"].read())
            written.append(store.write_results(status, numbers[status], entries))
            numbers[status] += 1
    current = set(written)
    files = [f for f in store.result_files() if f.status == "SUCCEEDED" or f in current]
    store.write_manifest(files, map_run_arn=map_run_arn)
    store.delete(f for f in store.result_files() if f.status != "SUCCEEDED" and f not in current)


def restore_results(store: RunStore, s3, bucket: str, prefix: str) -> dict | None:
    """aws-emulated resume: put the run directory's SUCCEEDED files back into the (fresh)
    emulated bucket with a manifest, as the earlier map runs left them on AWS."""
    if not store.has_manifest():
        return None
    keys = RunStore.manifest_keys(store.read_manifest(), "SUCCEEDED")
    listed = []
    for n, key in enumerate(keys):
        target_key = f"{prefix}/SUCCEEDED_{n}.json"
        s3.put_object(Bucket=bucket, Key=target_key, Body=json.dumps(store.read_entries(key)))
        listed.append({"Key": target_key})
    manifest_key = f"{prefix}/manifest.json"
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(
        {"DestinationBucket": bucket, "MapRunArn": "restored",
         "ResultFiles": {"SUCCEEDED": listed, "FAILED": [], "PENDING": []}}))
    return {"Bucket": bucket, "Key": manifest_key}


def done_positions(store: RunStore, expected: Expected | None = None) -> Intervals:
    """The item positions covered by the run's SUCCEEDED results so far; with ``expected``
    (the run's start), only by the entries proven to be this run's (verify.py), so that a
    resume recomputes the items of foreign or tampered entries."""
    if not store.has_manifest():
        return Intervals()
    keys = RunStore.manifest_keys(store.read_manifest(), "SUCCEEDED")
    if expected is not None:
        return Intervals(check_results(store, keys, expected, positions_required=True).spans)
    spans = []
    for entry in store.iter_entries(keys):
        spans += entry_positions(entry) or []
    return Intervals(spans)


def unfinished(items: Iterable, done: Intervals) -> list[dict]:
    """``{"index": item, "position": p}`` for every item whose position is not done, in
    order: the item list a resumed run's map reads (S3 ItemReader)."""
    return [{"index": item, POSITION_KEY: p} for p, item in enumerate(items) if p not in done]
