"""s3copy: copy every object under s3://bucket/prefix into a directory (e.g. an EFS mount).

Run input: ``{"source": "s3://bucket/prefix/", "dest": "/mnt/efs/data"}``. Items are the
ListObjectsV2 listing (streamed), each ``{"Key", "Size", "ETag", ...}``; keys keep their path
relative to the prefix. Per object, compute:

* refuses a key that would escape ``dest`` (``..``, absolute, NUL): reported, never written;
* skips it when an identical file is already there (same size and, where the ETag is an MD5
  digest, the same single- or multi-part MD5) -- so re-runs and resumes are idempotent;
* otherwise streams it (256 KiB at a time; no object is held in memory) into a hidden
  temporary file beside the target, verifies the size and the ETag -- the MD5 of a
  single-part upload, or the MD5 of part MD5s of a multipart one, its part size from
  HeadObject PartNumber=1 or, where a server ignores that, from the part sizes common clients
  use (an object whose layout cannot be reproduced is size-checked only and counted as
  "unverified") -- then fsyncs and renames it into place: a partial file never appears under
  the final name.

Throughput (see :mod:`.s3fetch`): one pool of threads per process copies a batch's objects,
biggest first, and a multipart object of at least PARALLEL_MIN_BYTES is fetched as ranged
GETs, one per part, by its thread and by helpers on the same pool, each range written at its
offset while its part's MD5 is computed from the bytes as they stream: the ETag is checked
without reading the file back (only a layout that is not the first guess is re-read to try
the others). Each GET is a presigned one read straight from the socket (:mod:`.s3get`), at a
fraction of botocore's CPU per request. One worker process by default (WORKER_PROCESSES):
the threads are the parallelism.

A transient S3 error raises, so the engine retries the batch; files already copied are then
skipped. reduce reports files and bytes copied, skipped and refused.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Iterable

from ..errors import InvalidEvent, UsageError
from ..job import Param, Params, Start, Workload, event_items
from . import s3fetch, s3get

_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})(?:-(\d+))?"?$')
MiB = 1 << 20
PARTIAL = ".stepmap-part-"
#: A multipart object at least this big is fetched part by part, in parallel.
PARALLEL_MIN_BYTES = 16 * MiB
#: Local worker processes unless the user says (--workers): s3fetch's threads are the
#: parallelism (the GIL is released in recv, MD5, pwrite and fsync), and every process
#: costs its own copy of boto3.
WORKER_PROCESSES = 1


class S3Copy(Workload):
    name = "s3copy"
    summary = "copy the objects under an S3 prefix into a directory, verified and idempotent"
    parameters = {
        "source": Param("s3://bucket/prefix to copy from"),
        "dest": Param("destination directory (any mounted filesystem, e.g. EFS)"),
    }

    def start(self, event: dict) -> Start:
        from ..sources import list_objects
        params = Params(event)
        params.reject_unknown(self.parameters)
        source, dest = params.string("source"), params.string("dest")
        if not source or not source.startswith("s3://") or not source[5:].split("/")[0]:
            raise UsageError("'source' must be an s3://bucket/prefix URL")
        if not dest:
            raise UsageError("'dest' must name the destination directory")
        bucket, _, prefix = source[5:].partition("/")
        # Not created here: the start step may run far from the workers (a client validating
        # an AWS run, where dest is an EFS mount only the Lambdas see); compute creates it.
        root = Path(dest).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise UsageError(f"dest {root} exists and is not a directory")
        return Start(params={"bucket": bucket, "prefix": prefix, "dest": str(root)},
                     items=list_objects(bucket, prefix),
                     summary=f"copy s3://{bucket}/{prefix} -> {root}",
                     workers_hint=WORKER_PROCESSES)

    def compute(self, event: dict) -> dict:
        items = [_unpack(item) for item in event_items(event)]  # bad input fails up front
        _client()  # made once, before the threads share it
        stats = _empty_stats()
        for outcome, key, size in s3fetch.run_all(_copy_one, items, key=_biggest_first):
            if outcome == "refused":
                stats["refused"] += 1
                stats["refused_keys"].append(key)
            elif outcome == "skipped":
                stats["skipped"] += 1
                stats["skipped_bytes"] += size
            else:
                stats["copied"] += 1
                stats["copied_bytes"] += size
                stats["unverified"] += outcome == "unverified"
        return stats

    def reduce(self, outputs: Iterable) -> dict:
        total = _empty_stats()
        for output in outputs:
            if not isinstance(output, dict):
                raise InvalidEvent("an s3copy result must be an object")
            for key in total:
                total[key] += output.get(key, [] if key == "refused_keys" else 0)
        return total


def _biggest_first(call: tuple) -> int:
    """run_all's order: big objects first, while the small ones can still fill the pool
    around their last ranges (the longest jobs first shortens the batch)."""
    return -call[0]["Size"]


def _empty_stats() -> dict:
    return {"copied": 0, "copied_bytes": 0, "skipped": 0, "skipped_bytes": 0,
            "unverified": 0, "refused": 0, "refused_keys": []}


def _copy_one(obj: dict, bucket: str, prefix: str, dest: Path) -> tuple[str, str, int]:
    """Copy one object: (refused | skipped | copied | unverified, key, bytes)."""
    target = safe_target(dest, prefix, obj["Key"])
    if target is None:
        return "refused", obj["Key"], 0
    if obj["Key"].endswith("/") and obj["Size"] == 0:
        target.mkdir(parents=True, exist_ok=True)  # a "folder" marker object
        return "skipped", obj["Key"], 0
    if _identical(target, obj, bucket):
        return "skipped", obj["Key"], obj["Size"]
    verified = _download(bucket, obj, target)
    return ("copied" if verified else "unverified"), obj["Key"], obj["Size"]


def _unpack(item: dict):
    obj = item.get("index")
    if (not isinstance(obj, dict) or not isinstance(obj.get("Key"), str)
            or isinstance(obj.get("Size"), bool) or not isinstance(obj.get("Size"), int)):
        raise InvalidEvent("an s3copy item must be an object listing entry with Key and Size")
    for field in ("bucket", "prefix", "dest"):
        if not isinstance(item.get(field), str):
            raise InvalidEvent(f"an s3copy item needs the job parameter {field!r}")
    return obj, item["bucket"], item["prefix"], Path(item["dest"])


def safe_target(dest: Path, prefix: str, key: str) -> Path | None:
    """Where ``key`` goes under ``dest``, or None when it would escape it."""
    relative = key[len(prefix):] if key.startswith(prefix) else key
    relative = relative.lstrip("/")
    parts = relative.split("/")
    if (not relative or "\0" in relative or "\\" in relative
            or any(part in ("..", ".") for part in parts if part) or key.startswith("/")):
        return None
    target = (dest / relative).resolve()
    if target == dest or dest not in target.parents:
        return None
    return target


@functools.cache
def _client():
    from ..storage import make_s3_client
    return make_s3_client(connections=s3fetch.THREADS)


# A forked child makes its own client: the parent's pooled connections are not its to use.
os.register_at_fork(after_in_child=_client.cache_clear)


def _identical(target: Path, obj: dict, bucket: str) -> bool:
    try:
        if not target.is_file() or target.stat().st_size != obj["Size"]:
            return False
    except OSError:
        return False
    return _checksum(target, obj, bucket) is not False


def _checksum(path: Path, obj: dict, bucket: str) -> bool | None:
    """Does the file reproduce the object's ETag? None when that cannot be told: the ETag is
    not an MD5 digest (e.g. SSE-KMS), or the multipart layout cannot be learned."""
    match = _MD5_ETAG.match(obj.get("ETag", ""))
    if not match:
        return None
    expected, parts = f"{match.group(1)}" + (f"-{match.group(2)}" if match.group(2) else ""), \
        int(match.group(2) or 0)
    if not parts:
        return _file_etag(path, 0, 0) == expected
    exact, guesses = _part_sizes(bucket, obj["Key"], obj["Size"], parts)
    if exact:
        return _file_etag(path, exact, parts) == expected
    return True if any(_file_etag(path, size, parts) == expected for size in guesses) else None


#: Part sizes common clients use (boto3 and the AWS CLI: 8 MiB), tried when a server will not
#: say (HeadObject with PartNumber is ignored by some S3-compatible servers, e.g. Ceph 16).
_COMMON_PART_SIZES = tuple(n * MiB for n in (8, 5, 16, 10, 15, 32, 50, 64, 100, 128))


def _part_sizes(bucket: str, key: str, size: int, parts: int) -> tuple[int | None, list[int]]:
    head = _client().head_object(Bucket=bucket, Key=key, PartNumber=1)
    if head.get("PartsCount") == parts and head["ContentLength"] < size:
        return head["ContentLength"], []
    fits = [p for p in _COMMON_PART_SIZES if -(-size // p) == parts]
    even = -(-size // parts)
    return None, fits + [-(-even // MiB) * MiB, even]


def _file_etag(path: Path, part_size: int, parts: int) -> str:
    """The ETag the file's bytes give: their MD5, or with ``parts`` the MD5 of the MD5s of
    its ``part_size`` pieces (read through this thread's buffer)."""
    buffer, digests = s3fetch.buffer(), []
    with open(path, "rb", buffering=0) as handle:
        whole = os.fstat(handle.fileno()).st_size
        for _ in range(max(1, parts)):
            digest, left = hashlib.md5(usedforsecurity=False), part_size if parts else whole
            while left and (read := handle.readinto(buffer[:min(len(buffer), left)])):
                digest.update(buffer[:read])
                left -= read
            digests.append(digest)
    if not parts:
        return digests[0].hexdigest()
    combined = hashlib.md5(b"".join(d.digest() for d in digests), usedforsecurity=False)
    return f"{combined.hexdigest()}-{parts}"


def _download(bucket: str, obj: dict, target: Path) -> bool:
    """Stream the object into place; returns whether its checksum could be verified."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # One fixed temporary name per target: an interrupted earlier attempt's partial file is
    # simply overwritten (a key is only ever processed by one task at a time).
    partial = target.parent / f".{target.name}{PARTIAL}"
    match = _MD5_ETAG.match(obj.get("ETag", ""))
    parts = int(match.group(2) or 0) if match else 0
    try:
        if parts > 1 and obj["Size"] >= PARALLEL_MIN_BYTES:
            in_parts = _download_parts(bucket, obj, partial, parts)
            if in_parts is not _SEQUENTIAL:
                os.replace(partial, target)
                return in_parts is True
        digest = hashlib.md5(usedforsecurity=False)  # a single-part ETag: no re-read
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            body = s3get.get(_client(), bucket, obj["Key"])
            try:
                size = s3fetch.receive(body, fd, 0, digest)
            finally:
                body.close()
            os.fsync(fd)
        finally:
            os.close(fd)
        if size != obj["Size"]:
            raise IOError(f"{obj['Key']}: got {size} bytes, the listing said {obj['Size']}")
        match = _MD5_ETAG.match(obj.get("ETag", ""))
        verified: bool | None
        if match and not match.group(2):
            verified = digest.hexdigest() == match.group(1)
        else:
            verified = _checksum(partial, obj, bucket)
        if verified is False:
            raise IOError(f"{obj['Key']}: checksum mismatch with ETag {obj['ETag']}")
        os.replace(partial, target)
        return verified is True
    finally:
        partial.unlink(missing_ok=True)


_SEQUENTIAL = object()  # _download_parts: no usable part layout, stream it in one GET


def _download_parts(bucket: str, obj: dict, partial: Path, parts: int):
    """Fetch a multipart object's parts as parallel ranged GETs into ``partial`` (fsynced);
    True/None (verified or not) like _checksum, an IOError on a mismatch, or _SEQUENTIAL."""
    size, key = obj["Size"], obj["Key"]
    exact, guesses = _part_sizes(bucket, key, size, parts)
    part_size = exact or next((g for g in guesses if g and -(-size // g) == parts), None)
    if part_size is None:
        return _SEQUENTIAL
    bounds = [(start, min(size, start + part_size)) for start in range(0, size, part_size)]
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        digests = s3fetch.fetch_ranges(_client(), bucket, key, fd, bounds)
        os.fsync(fd)
    finally:
        os.close(fd)
    expected = obj["ETag"].strip('"')
    if f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{parts}" \
            == expected:
        return True
    if exact:
        raise IOError(f"{key}: checksum mismatch with ETag {obj['ETag']}")
    others = [g for g in guesses if g != part_size]  # the first guess was wrong: re-read
    if any(_file_etag(partial, g, parts) == expected for g in others):
        return True
    return None


WORKLOAD = S3Copy()
