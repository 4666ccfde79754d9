"""Where result files live: a local directory or an S3 prefix, behind one small interface.

Writes are atomic on both: a local file is written under a temporary name, fsynced and
renamed; an S3 object appears whole with a single PUT. So a reader (or a resumed run) sees
either the whole file or none of it, never a torn one.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import itertools
import os
from typing import Iterator, Protocol

from .errors import ResultsError


_unique = itertools.count()


class Storage(Protocol):
    """What the results store and the run lock need, on a local directory and on S3."""

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def create(self, key: str, data: bytes) -> object:
        """Write ``key`` only if it does not exist: truthy if created, falsy if it existed."""
        ...
    def list(self, prefix: str) -> Iterator[str]:
        """The files directly under ``prefix`` (not in its subdirectories; no dot-files)."""
        ...
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """The names of the directories (S3: common prefixes) directly under ``prefix``."""
        ...
    def delete(self, key: str) -> None: ...
    def describe(self, key: str = "") -> str: ...
    def local_path(self, key: str) -> str | None:
        """The file ``key`` is on this machine's file system (to lock it, or to write it
        as a stream), or None where there is no such file (S3)."""
        ...
    def ensure_writable(self) -> None:
        """Fail now, with one line, if results cannot be written (before anything runs)."""
        ...


class LocalStorage:
    """Keys are '/'-separated paths under ``root``. Paths are plain strings (os.path):
    pathlib and what it imports (urllib.parse, ipaddress) would cost every run ~3 ms."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.realpath(os.path.expanduser(os.fspath(root)))

    def _path(self, key: str) -> str:
        path = os.path.realpath(os.path.join(self.root, key))
        if path != self.root and not path.startswith(os.path.join(self.root, "")):
            raise ResultsError(f"refusing a key outside the results directory: {key!r}")
        return path

    def local_path(self, key: str) -> str | None:
        return self._path(key)

    def ensure_writable(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
            # a name of its own: threads of one process check the same directory at once
            probe = _temporary(os.path.join(self.root, "probe"), "probe")
            with open(probe, "xb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise ResultsError(f"results directory {self.root} is not writable: "
                               f"{exc.strerror or exc}") from None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = None
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = _temporary(path, "tmp")
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
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise ResultsError(f"missing results file {path}") from None
        except OSError as exc:
            raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist (atomically: a hard link of a complete
        temporary file, which fails if the name is taken); False if it already existed."""
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _temporary(path, "new")
        try:
            with open(tmp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                with open(path, "xb") as handle:  # no hard links here: exclusive, not atomic
                    handle.write(data)
        except FileExistsError:
            return False
        except OSError as exc:
            raise ResultsError(f"cannot write {path}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not os.path.isdir(base):
            return
        relative = os.path.relpath(base, self.root).replace(os.sep, "/")
        for name in sorted(os.listdir(base)):
            if not name.startswith(".") and os.path.isfile(os.path.join(base, name)):
                yield name if relative == "." else f"{relative}/{name}"

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        base = self._path(prefix) if prefix else self.root
        if not os.path.isdir(base):
            return []
        return sorted(e.name for e in os.scandir(base) if e.is_dir())

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def describe(self, key: str = "") -> str:
        return self._path(key) if key else self.root


def _temporary(path: str, suffix: str) -> str:
    """A name beside ``path`` that no other writer (process or thread) uses."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}-{next(_unique)}.{suffix}")


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
            raise ResultsError(f"cannot write s3://{self.bucket}/{key}: {s3_reason(exc)}") from None

    def create(self, key: str, data: bytes) -> str | None:
        """A conditional create (If-None-Match: *): the new object's ETag, or None if ``key``
        already exists. Of racing creators exactly one succeeds."""
        return self._put_if(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, etag: str) -> str | None:
        """Overwrite ``key`` only if its ETag is still ``etag`` (If-Match): the new ETag, or
        None if the object changed or vanished since it was read. (Ceph 16's RGW matches
        only the bare ETag, AWS the quoted one: a refused quoted form is tried bare, which
        is the same condition.)"""
        return (self._put_if(key, data, IfMatch=etag)
                or (self._put_if(key, data, IfMatch=etag.strip('"')) if '"' in etag else None))

    def _put_if(self, key: str, data: bytes, **condition) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                          **condition)["ETag"]
        except Exception as exc:
            if s3_reason(exc).split(":")[0] in ("PreconditionFailed", "412", "NoSuchKey",
                                                 "ConditionalRequestConflict", "409"):
                return None
            raise ResultsError(f"cannot write s3://{self.bucket}/{key}: {s3_reason(exc)}") from None

    def read_with_age(self, key: str) -> tuple[bytes, str, float] | None:
        """(data, ETag, age in seconds by the server's own clock) or None if missing; the age
        compares the object's Last-Modified with the reply's Date, so clocks of different
        machines never enter it."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key)
            data = reply["Body"].read()
        except Exception as exc:
            if s3_reason(exc).split(":")[0] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise ResultsError(f"cannot read s3://{self.bucket}/{key}: {s3_reason(exc)}") from None
        from email.utils import parsedate_to_datetime
        now = parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"])
        return data, reply["ETag"], (now - reply["LastModified"]).total_seconds()

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise ResultsError(f"cannot read s3://{self.bucket}/{key}: {s3_reason(exc)}") from None

    def exists(self, key: str) -> bool:
        """One HEAD request (not a listing of the run's possibly many result files)."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if s3_reason(exc).split(":")[0] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise ResultsError(f"cannot read s3://{self.bucket}/{key}: {s3_reason(exc)}") from None
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
            raise ResultsError(f"cannot list s3://{self.bucket}/{prefix}: {s3_reason(exc)}") from None

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        names = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                names += [p["Prefix"][len(prefix):].rstrip("/")
                          for p in page.get("CommonPrefixes", [])]
        except Exception as exc:
            raise ResultsError(f"cannot list s3://{self.bucket}/{prefix}: {s3_reason(exc)}") from None
        return sorted(names)

    def local_path(self, key: str) -> str | None:
        return None

    def ensure_writable(self) -> None:
        """Nothing to check cheaply: the run record's PUT, before any item runs, fails with
        the bucket's own reason (no such bucket, access denied)."""

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise ResultsError(f"cannot delete s3://{self.bucket}/{key}: {s3_reason(exc)}") from None

    def describe(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"


def make_s3_client(*, connections: int = 10):
    """An S3 client (botocore's: boto3 adds only its transfer methods, and its import, with
    s3transfer's, costs ~80 ms a run does not need); ``connections`` sizes its pool for
    callers that use it from that many threads at once (botocore's default is 10)."""
    try:
        from botocore.config import Config
    except ImportError:
        raise ResultsError("s3:// locations need boto3: pip install 'stepmap[s3]'") from None
    from botocore.exceptions import BotoCoreError
    config = Config(retries={"max_attempts": 8, "mode": "standard"}, s3={"addressing_style": "path"},
                    max_pool_connections=connections)
    # A session of its own: a shared session caches the credentials it first resolved, and
    # the environment (AWS_PROFILE, keys, endpoint) may have changed since.
    try:
        return _session().create_client("s3", config=config)
    except (BotoCoreError, ValueError) as exc:  # no such AWS_PROFILE; a malformed endpoint
        raise ResultsError(f"cannot set up S3 access: {exc}") from None


#: botocore's data loader (the parsed service model and endpoint rules) per data path.
_LOADERS: dict = {}


def _session():
    """A new botocore session sharing this process's data loader: its credentials and
    endpoint are resolved afresh, but the S3 model is parsed once per process (12 MiB and
    0.1 s of CPU per client otherwise), and a forked worker reuses its parent's."""
    import botocore.session
    core = botocore.session.get_session()
    path = core.get_config_variable("data_path")
    if path in _LOADERS:
        core.register_component("data_loader", _LOADERS[path])
    else:
        _LOADERS[path] = core.get_component("data_loader")
    return core


#: Error codes that mean "not allowed": a wrong key, a wrong secret, a missing permission.
_DENIED = ("403", "Forbidden", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId")


def s3_reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        reason = f"{error.get('Code')}: {error.get('Message') or ''}".strip()
        if str(error.get("Code")) in _DENIED:
            reason += "; check the AWS credentials and the bucket's permissions"
        return reason
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_location(location: str) -> tuple[Storage, str]:
    """'s3://bucket/prefix' or a directory path -> (storage, key prefix inside it)."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[5:].partition("/")
        if not bucket:
            raise ResultsError(f"no bucket in {location!r}")
        return S3Storage(bucket), prefix.strip("/")
    return LocalStorage(location), ""
