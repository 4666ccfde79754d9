"""One GET for s3copy -- a whole object or one range of it -- at a third to a half of the CPU
that botocore's ``get_object`` spends per request (~1.1 ms, most of it holding the GIL: parameter
validation, endpoint rules, a dozen event hooks, response parsing down to dates):

    get(client, bucket, key, span)
      │
      ├─► a presigned URL (botocore signs it: SigV4 with the client's credentials, region,
      │   endpoint)
      ├─► sent over a plain-HTTP endpoint with no proxy: straight over http.client, on a
      │   keep-alive connection of this thread's own; otherwise through the client's own
      │   HTTP session (its connection pool, proxies, TLS settings and timeouts)
      ├─► 200, or 206 with the length asked ──► _Body: read straight from the socket
      └─► any other answer, or none ──► client.get_object: botocore's retries,
                                        redirects and error messages, as before

The fast path changes nothing a caller can see but the CPU: the same bytes, the same
checks by the caller (length, MD5), and every failure is botocore's own. A server that
refuses presigned URLs (say, one with query-string auth turned off) costs one extra request
once: the process then stops trying them.
"""

from __future__ import annotations

import http.client
import os
import threading
import weakref
from typing import Callable
from urllib.parse import urlsplit

#: Answers to a presigned GET that only botocore's own request explains: after one of these
#: was followed by a get_object that succeeded, this process makes no more presigned GETs.
_REFUSED = (301, 400, 403, 405, 501)
_presigned_ok = True


#: This thread's plain-HTTP keep-alive connections, by (host, port).
_LOCAL = threading.local()
#: Per client, per host: may its GETs go straight, no proxy in between?
_UNPROXIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forget() -> None:
    """In a forked child: presigned GETs may work again; the parent's connections are not
    the child's to use."""
    global _presigned_ok, _LOCAL
    _presigned_ok, _LOCAL = True, threading.local()


os.register_at_fork(after_in_child=_forget)


def get(client, bucket: str, key: str, span: tuple[int, int] | None = None):
    """The body of ``key`` (or of its bytes ``span`` = (first, last), inclusive) as an object
    with ``readinto(buffer)`` and ``close()``. A range answered with another length than
    asked raises IOError before any byte is read."""
    global _presigned_ok
    ranged = {} if span is None else {"Range": f"bytes={span[0]}-{span[1]}"}
    status = None
    if _presigned_ok:
        body, status = _presigned(client, bucket, key, ranged)
        if body is not None:
            length = body.left
            if span is not None and length != span[1] - span[0] + 1:
                body.close()
                raise IOError(f"{key}: range {span[0]}-{span[1]} gave {length} bytes")
            return body
    body = client.get_object(Bucket=bucket, Key=key, **ranged)["Body"]
    if status in _REFUSED:
        _presigned_ok = False
    return body


def _presigned(client, bucket: str, key: str, headers: dict):
    """(body, None) from a presigned GET, or (None, its status or None) when it did not give
    the expected answer (nothing read, its connection dropped)."""
    from botocore.exceptions import BotoCoreError
    try:
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    except BotoCoreError:  # e.g. no credentials: get_object says so
        return None, None
    parts = urlsplit(url)
    if parts.scheme == "http" and _unproxied(client, url):
        return _direct(client, key, parts, headers)
    return _through_session(client, key, url, headers)


def _unproxied(client, url: str) -> bool:
    """No proxy configured for the client, nor in the environment for ``url``'s host (asked
    once per client and host: the environment's proxies cost ~0.1 ms to look up)."""
    from botocore.utils import get_environ_proxies
    known = _UNPROXIED.setdefault(client, {})
    host = urlsplit(url).netloc
    if host not in known:
        known[host] = not client.meta.config.proxies and not get_environ_proxies(url)
    return known[host]


def _direct(client, key: str, parts, headers: dict):
    """A plain-HTTP GET on this thread's own keep-alive connection (http.client: no urllib3
    URL parsing, no botocore send path); any failure drops the connection."""
    address = (parts.hostname, parts.port or 80)
    connections = _LOCAL.__dict__.setdefault("connections", {})
    connection = connections.pop(address, None) or http.client.HTTPConnection(
        *address, timeout=client.meta.config.read_timeout)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}", headers=headers)
        response = connection.getresponse()
    except (OSError, http.client.HTTPException):  # e.g. a keep-alive the server closed
        connection.close()
        return None, None
    length = response.getheader("Content-Length", "")
    if response.status != (206 if headers else 200) or not length.isdigit():
        connection.close()
        return None, response.status

    def keep() -> None:
        connections.setdefault(address, connection)
    return _Body(key, response, int(length), keep, connection.close), None


def _through_session(client, key: str, url: str, headers: dict):
    """A GET through the client's own HTTP session (its pool, proxies, TLS, timeouts)."""
    from botocore.awsrequest import AWSPreparedRequest
    from botocore.exceptions import BotoCoreError
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if session is None:  # not a botocore client as we know it: its own path
        return None, None
    try:
        response = session.send(AWSPreparedRequest("GET", url, headers, None, True)).raw
    except BotoCoreError:  # no connection, a timeout: botocore's get_object retries it
        return None, None
    length = response.headers.get("Content-Length", "")
    if response.status != (206 if headers else 200) or not length.isdigit():
        response.close()
        return None, response.status
    # http.client's response under urllib3's copying layers, read straight from the socket
    return _Body(key, getattr(response, "_fp", None) or response, int(length),
                 response.release_conn, response.close), None


class _Body:
    """A response body read straight into the caller's buffer; ``keep`` hands its connection
    back for the next GET once every byte is read, ``drop`` closes it if the body is closed
    before."""

    def __init__(self, key: str, stream, length: int, keep: Callable[[], None],
                 drop: Callable[[], None]):
        self.key, self.stream, self.left, self.keep, self.drop = key, stream, length, keep, drop
        if not length:  # an empty object: its response read (so closed), its connection free
            stream.read()
            keep()

    def readinto(self, buffer) -> int:
        if not self.left:
            return 0
        read = self.stream.readinto(buffer[:self.left] if len(buffer) > self.left else buffer)
        if not read:  # the connection ended early: http.client reads 0, it does not raise
            unread = self.left
            self.close()
            raise IOError(f"{self.key}: connection closed with {unread} bytes unread")
        self.left -= read
        if not self.left:
            self.keep()
        return read

    def close(self) -> None:
        if self.left:
            self.left = 0
            self.drop()
