"""Where result files live: a local directory or an S3 prefix, behind one small interface.

Writes are atomic on both: a local file is written under a temporary name, fsynced and
renamed; an S3 object appears whole with a single PUT. So a reader (or a resumed run) sees
either the whole file or none of it, never a torn one.
"""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path
from typing import Iterator, Protocol

from .errors import ResultsError


_unique = itertools.count()


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...
    def describe(self, key: str = "") -> str: ...


class LocalStorage:
    """Keys are '/'-separated paths under ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ResultsError(f"refusing a key outside the results directory: {key!r}")
        return path

    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise ResultsError(f"results directory {self.root} is not writable: "
                               f"{exc.strerror or exc}") from None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.{os.getpid()}-{next(_unique)}.tmp"
            with open(tmp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or exc)
            raise ResultsError(f"cannot write {path}: {reason}; results written before "
                               "are intact") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ResultsError(f"missing results file {path}") from None
        except OSError as exc:
            raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for path in sorted(base.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                yield path.relative_to(self.root).as_posix()

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def describe(self, key: str = "") -> str:
        return str(self._path(key)) if key else str(self.root)


class S3Storage:
    """Keys are object keys in ``bucket``. Credentials, region and endpoint come from the
    standard AWS environment and config (AWS_ENDPOINT_URL works for any S3-compatible server).
    Transient errors (5xx, SlowDown, throttling) are retried by botocore's standard mode."""

    def __init__(self, bucket: str, client=None):
        self.bucket = bucket
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = make_s3_client()
        return self._client

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:  # botocore's errors share no useful base besides this
            raise ResultsError(f"cannot write s3://{self.bucket}/{key}: {_s3_reason(exc)}") from None

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise ResultsError(f"cannot read s3://{self.bucket}/{key}: {_s3_reason(exc)}") from None

    def exists(self, key: str) -> bool:
        """One HEAD request (not a listing of the run's possibly many result files)."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _s3_reason(exc).split(":")[0] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise ResultsError(f"cannot read s3://{self.bucket}/{key}: {_s3_reason(exc)}") from None
        return True

    def list(self, prefix: str) -> Iterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if name and not name.startswith("."):
                        yield obj["Key"]
        except Exception as exc:
            raise ResultsError(f"cannot list s3://{self.bucket}/{prefix}: {_s3_reason(exc)}") from None

    def list_dirs(self, prefix: str = "") -> list[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        names = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise ResultsError(f"cannot delete s3://{self.bucket}/{key}: {_s3_reason(exc)}") from None

    def describe(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"


def make_s3_client(*, connections: int = 10):
    """A boto3 S3 client; ``connections`` sizes its pool for callers that use it from that
    many threads at once (boto3's default is 10)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ResultsError("s3:// locations need boto3: pip install 'stepmap[s3]'") from None
    config = Config(retries={"max_attempts": 8, "mode": "standard"}, s3={"addressing_style": "path"},
                    max_pool_connections=connections)
    # A session of its own: boto3's default session caches the credentials it first resolved,
    # and the environment (AWS_PROFILE, keys, endpoint) may have changed since.
    return boto3.session.Session().client("s3", config=config)


def _s3_reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code')}: {error.get('Message') or ''}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_location(location: str) -> tuple[Storage, str]:
    """'s3://bucket/prefix' or a directory path -> (storage, key prefix inside it)."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[5:].partition("/")
        if not bucket:
            raise ResultsError(f"no bucket in {location!r}")
        return S3Storage(bucket), prefix.strip("/")
    return LocalStorage(location), ""
