"""One GET for s3copy -- a whole object or one range of it -- at about a third of the CPU that
botocore's ``get_object`` spends per request (~1 ms, most of it holding the GIL: parameter
validation, endpoint rules, a dozen event hooks, response parsing down to dates):

    get(client, bucket, key, span)
      │
      ├─► a presigned URL (botocore signs it: SigV4 with the client's credentials, region,
      │   endpoint)
      ├─► sent through the client's own HTTP session (its connection pool, proxies, TLS
      │   settings and timeouts)
      ├─► 200, or 206 with the length asked ──► _Body: read straight from the socket
      └─► any other answer, or none ──► client.get_object: botocore's retries, redirects
                                        and error messages, exactly as before

The fast path changes nothing a caller can see but the CPU: the same bytes, the same
checks by the caller (length, MD5), and every failure is botocore's own. A server that
refuses presigned URLs (say, one with query-string auth turned off) costs one extra request
once: the process then stops trying them.
"""

from __future__ import annotations

import os

#: Answers to a presigned GET that only botocore's own request explains: after one of these
#: was followed by a get_object that succeeded, this process makes no more presigned GETs.
_REFUSED = (301, 400, 403, 405, 501)
_presigned_ok = True


def _forget() -> None:
    global _presigned_ok
    _presigned_ok = True


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
    from botocore.awsrequest import AWSPreparedRequest
    from botocore.exceptions import BotoCoreError
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if session is None:  # not a botocore client as we know it: its own path
        return None, None
    try:
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
        response = session.send(AWSPreparedRequest("GET", url, headers, None, True)).raw
    except BotoCoreError:  # no connection, a timeout: botocore's get_object retries it
        return None, None
    length = response.headers.get("Content-Length", "")
    if response.status != (206 if headers else 200) or not length.isdigit():
        response.close()
        return None, response.status
    return _Body(response, int(length)), None


class _Body:
    """A response body read straight from its socket (http.client's ``readinto``, under
    urllib3's copying layers); its connection goes back to the pool once every byte is read,
    and is dropped if the body is closed before."""

    def __init__(self, response, length: int):
        self.response, self.left = response, length
        self.stream = getattr(response, "_fp", None) or response

    def readinto(self, buffer) -> int:
        if not self.left:
            return 0
        read = self.stream.readinto(buffer[:self.left] if len(buffer) > self.left else buffer)
        if not read:  # http.client raises IncompleteRead itself; urllib3 may not
            self.close()
            raise IOError(f"connection closed with {self.left} bytes of the body unread")
        self.left -= read
        if not self.left:
            self.response.release_conn()
        return read

    def close(self) -> None:
        if self.left:
            self.left = 0
            self.response.close()
