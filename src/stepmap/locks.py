"""One process at a time works on a run: the run lock, local or on S3.

    local runs directory   <run>/.lock  a POSIX record lock (fcntl.lockf) on the file
    S3 runs location       <run>/.lock  an object created with If-None-Match: *, kept alive
                                        by a heartbeat, deleted when the run ends

A POSIX record lock belongs to the process that took it: forked workers do not inherit it
(unlike flock, whose lock lives in the open file they share), and the kernel drops it the
moment its holder dies, so a killed ``stepmap`` never leaves a lock behind, even while its
orphaned workers linger. The file's text only names the holder for messages; probing who
holds a lock (``stepmap runs``) reads it and never rewrites it.

S3 has no locks, so the lock object carries its own lease: its holder rewrites it every
``S3_LOCK_HEARTBEAT_SECONDS`` (a conditional write, If-Match its last ETag), and an object
not rewritten for ``S3_LOCK_TTL_SECONDS`` (by the S3 server's clock) is stale, as is one whose
holder is a process on this machine that no longer exists. The lock is released on every
ending of the run (success, error, outage, Ctrl-C): an outage delays the release by up to
``S3_RELEASE_SECONDS`` of retries; a holder killed outright leaves a lock that expires after
the TTL.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import struct
import sys
import threading
import time
from typing import Iterator

from .errors import ResultsError, RunLockedError, UsageError
from .results import RunStore
from .storage import S3Storage

LOCK_NAME = ".lock"
#: An S3 lock not rewritten for this long (by the server's clock) was left by a crashed run.
S3_LOCK_TTL_SECONDS = 180.0
#: How often the holder of an S3 lock rewrites it.
S3_LOCK_HEARTBEAT_SECONDS = 30.0
#: How long releasing an S3 lock keeps retrying through an outage before leaving it to expire.
S3_RELEASE_SECONDS = 60.0

# Locks this process holds, by (device, inode): a second lockf by the same process would
# succeed, and closing any descriptor of the file would drop the first one.
_HELD: set[tuple[int, int]] = set()
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def run_lock(store: RunStore) -> Iterator[None]:
    """Hold the run's lock for the duration of the block; RunLockedError if another holds it."""
    path = store.storage.local_path(store.key(LOCK_NAME))
    if path is not None:
        with _local_lock(store, path):
            yield
    else:
        with _S3Lock(store):
            yield


def create_run(store: RunStore, record: dict, *, check_only: bool = False) -> None:
    """Write a new run's record, refusing a run id that exists. Call it holding the lock:
    the check and the create are then one step (and the create is conditional too: a hard
    link locally, If-None-Match on S3). ``check_only``: refuse an existing run, write nothing."""
    from .results import RUN_RECORD
    data = json.dumps(record, separators=(",", ":")).encode("utf-8")
    if store.has_record() or not (check_only or store.storage.create(store.key(RUN_RECORD), data)):
        raise UsageError(f"run {store.run_id} already exists in "
                         f"{store.storage.describe(store.prefix)}; use 'stepmap resume'")


def lock_holder(store: RunStore) -> str | None:
    """Who holds the run's lock now (None: nobody). Reads only: the lock is not taken and
    its file is not rewritten, so checking a stopped run changes nothing."""
    path = store.storage.local_path(store.key(LOCK_NAME))
    if path is None:
        current = _S3Lock(store).current()
        return None if current is None or current.stale else current.holder
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None  # not a lock anyone could hold (taking it says what is wrong)
    with _HELD_GUARD:  # held until the descriptor is closed: no thread of ours locks it meanwhile
        if (info.st_dev, info.st_ino) in _HELD:
            return f"process {os.getpid()} (this one)"
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None  # unreadable: nobody we could name (taking it says what is wrong)
        try:
            pid = _lock_owner(fd, path)
            return None if pid is None else (_holder_text(fd) or f"process {pid}")
        finally:
            os.close(fd)  # this process holds no lock on it (checked above): nothing dropped


# ---------------------------------------------------------------- local

@contextlib.contextmanager
def _local_lock(store: RunStore, path: str) -> Iterator[None]:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path) and not os.path.isfile(path):
            raise ResultsError(f"{path} is not a file: remove it (a run's lock must be a file)")
        with _HELD_GUARD:  # no thread of ours takes or drops a lock meanwhile
            fd, ident = _take(store, path)
    except OSError as exc:
        raise ResultsError(f"cannot open the run lock {path}: {exc.strerror or exc}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {_hostname()}".encode(), 0)
        yield
    finally:
        with _HELD_GUARD:
            _HELD.discard(ident)
            os.close(fd)  # closing drops the record lock


def _take(store: RunStore, path: str) -> tuple[int, tuple[int, int]]:
    """Open and lock ``path`` (call with _HELD_GUARD held). A file this process already
    locks is refused before it is opened: closing a second descriptor would drop the lock."""
    import fcntl
    with contextlib.suppress(FileNotFoundError):  # lock files are never deleted
        info = os.stat(path)
        if (info.st_dev, info.st_ino) in _HELD:
            raise RunLockedError(f"run {store.run_id} is in use by this process")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder_text(fd) or "another process"
        os.close(fd)
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise ResultsError(f"cannot lock {path}: {exc.strerror}") from None
        raise RunLockedError(f"run {store.run_id} is in use by {holder}; try again when it "
                             "has finished") from None
    ident = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
    _HELD.add(ident)
    return fd, ident


def _holder_text(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _lock_owner(fd: int, path: str) -> int | None:
    """The pid holding a write lock on the file, None if unlocked (F_GETLK: no lock taken)."""
    import fcntl
    if sys.platform.startswith("linux") and struct.calcsize("P") == 8:
        # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding)
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, query))
        return None if kind == fcntl.F_UNLCK else pid
    probe = os.open(path, os.O_RDWR)  # elsewhere: try the lock and give it back at once
    try:
        fcntl.lockf(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return -1
    finally:
        os.close(probe)
    return None


# ---------------------------------------------------------------- S3

class _Current:
    def __init__(self, body: dict, etag: str, age: float):
        self.body, self.etag, self.age = body, etag, age
        self.holder = str(body.get("holder", "another process"))

    @property
    def stale(self) -> bool:
        if self.age >= S3_LOCK_TTL_SECONDS:
            return True
        host, pid = self.body.get("host"), self.body.get("pid")
        return host == _hostname() and isinstance(pid, int) and not _alive(pid)


class _S3Lock:
    """The lock object of an S3 run (see the module docstring)."""

    def __init__(self, store: RunStore):
        self.store, self.key = store, store.key(LOCK_NAME)
        self.storage: S3Storage = store.storage  # type: ignore[assignment]  # no local path
        self.token = os.urandom(8).hex()
        self.etag: str | None = None
        self.lost = ""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"holder": f"process {os.getpid()} on {_hostname()}",
                           "host": _hostname(), "pid": os.getpid(), "token": self.token,
                           "time": time.time(), "ttl": S3_LOCK_TTL_SECONDS}).encode()

    def current(self) -> _Current | None:
        found = self.storage.read_with_age(self.key)
        if found is None:
            return None
        data, etag, age = found
        try:
            body = json.loads(data)
        except ValueError:
            body = {}
        return _Current(body if isinstance(body, dict) else {}, etag, age)

    def __enter__(self) -> "_S3Lock":
        self.etag = self.storage.create(self.key, self._body())
        if self.etag is None:
            current = self.current()
            if current is not None and not current.stale:
                left = max(0, round(S3_LOCK_TTL_SECONDS - current.age))
                raise RunLockedError(
                    f"run {self.store.run_id} is in use by {current.holder}; try again when it "
                    f"has finished (a lock not renewed expires in {left} s)")
            self.etag = (self.storage.replace(self.key, self._body(), current.etag)
                         if current is not None else self.storage.create(self.key, self._body()))
            if self.etag is None:
                raise RunLockedError(f"run {self.store.run_id} was just taken by another process")
        self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                      name=f"stepmap-lock-{self.store.run_id}")
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(S3_LOCK_HEARTBEAT_SECONDS):
            held = self.etag
            if held is None:  # not taken (entering raised): nothing to renew
                return
            try:
                etag = self.storage.replace(self.key, self._body(), held)
            except ResultsError:
                continue  # an outage: try again at the next beat (the TTL allows several)
            if etag is None:  # expired and taken over: stop working on a run we do not own
                self.lost = "its lock expired and another process took the run over"
                import _thread
                _thread.interrupt_main()
                return
            self.etag = etag

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self._release()
        if self.lost:
            raise RunLockedError(f"run {self.store.run_id} stopped: {self.lost}")

    def _release(self) -> None:
        """Delete the lock if it is still ours, retrying through an outage for a while."""
        deadline, delay = time.monotonic() + S3_RELEASE_SECONDS, 0.5
        while True:
            try:
                current = self.current()
                if current is not None and current.body.get("token") == self.token:
                    self.storage.delete(self.key)
                return
            except ResultsError:
                if time.monotonic() + delay > deadline:
                    return  # still unreachable: the lock expires after S3_LOCK_TTL_SECONDS
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def _hostname() -> str:
    return os.uname().nodename


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
