"""Item sources, mirroring the Distributed Map's ItemReader: where a run's items come from
when they are not the start step's own list.

    --items data.json            a JSON array            (ItemReader InputType JSON)
    --items data.jsonl           JSON Lines               (InputType JSONL)
    --items data.csv             CSV, first row = header  (InputType CSV; values are strings)
    --items s3://bucket/key.csv  the same formats, read from S3
    --items s3://bucket/prefix/  an object listing        (s3:listObjectsV2): {Key, Size, ETag, ...}

Every source streams: files are read in chunks and listings page by page, so memory does not
grow with the number of items.
"""

from __future__ import annotations

import csv
import io
import json
import re
from json.encoder import encode_basestring_ascii
from json.scanner import make_scanner
from typing import IO, Iterator

from .bigint import MAX_INPUT_DIGITS, parse_int_strict, reject_constant
from .errors import UsageError
from .job import nesting_depth

FORMATS = ("json", "jsonl", "csv", "s3-listing")
_CHUNK = 1 << 16
#: The most characters one item may take in a source: a JSON Lines line, a CSV row, an element
#: of a JSON array. A source without line ends (``/dev/zero``) fails at this size instead of
#: filling memory. (A Distributed Map's items are smaller still: 256 KiB per state input.)
MAX_ITEM_CHARS = 1 << 20
#: Items nested deeper than this are refused (and JSON parsing recursion stays bounded).
MAX_ITEM_DEPTH = 64


def detect_format(spec: str) -> str:
    if spec.startswith("s3://") and spec.endswith("/"):
        return "s3-listing"
    lowered = spec.lower()
    for suffix, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"),
                         (".csv", "csv")):
        if lowered.endswith(suffix):
            return kind
    raise UsageError(f"cannot tell the format of --items {spec!r}: name a .json, .jsonl or "
                     ".csv file, an s3://bucket/prefix/ listing, or give --items-format")


def read_items(spec: str, kind: str | None = None) -> Iterator:
    """Stream the items of ``spec`` (a path or s3:// URL)."""
    kind = kind or detect_format(spec)
    if kind not in FORMATS:
        raise UsageError(f"unknown --items-format {kind!r}: expected {', '.join(FORMATS)}")
    if kind == "s3-listing":
        if not spec.startswith("s3://"):
            raise UsageError("an s3-listing source must be an s3://bucket/prefix URL")
        bucket, _, prefix = spec[5:].partition("/")
        return list_objects(bucket, prefix)
    return _parse(kind, spec)


def _parse(kind: str, spec: str) -> Iterator:
    with _open_binary(spec) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # a leading BOM is no item
        try:
            if kind == "json":
                yield from _json_array(text, spec)
            elif kind == "jsonl":
                yield from _json_lines(text, spec)
            else:
                yield from _csv_rows(text, spec)
        except UnicodeDecodeError:
            raise UsageError(f"--items {spec} is not valid UTF-8") from None
        except csv.Error as exc:
            raise UsageError(f"--items {spec}: bad CSV: {exc}") from None


def _open_binary(spec: str) -> IO[bytes]:
    if spec.startswith("s3://"):
        from .storage import s3_reason, make_s3_client
        bucket, _, key = spec[5:].partition("/")
        try:
            body = make_s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as exc:  # botocore errors share no narrower useful base
            raise UsageError(f"cannot read --items {spec}: {s3_reason(exc)}") from None
        return io.BufferedReader(_BodyReader(body), _CHUNK)
    try:
        return open(spec, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read --items {spec}: {exc.strerror or exc}") from None


class _BodyReader(io.RawIOBase):
    """botocore's StreamingBody as a real raw stream, so TextIOWrapper can decode it lazily."""

    def __init__(self, body):
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.body.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.body.close()
        super().close()


class _BoundedLines:
    """The lines of a text stream, none longer than MAX_ITEM_CHARS; with ``per_line=False``
    at most that many characters between two calls of :meth:`row_done` (a CSV row may span
    lines, inside quotes)."""

    def __init__(self, text: io.TextIOBase, spec: str, per_line: bool = True):
        self.text, self.spec, self.per_line, self.taken = text, spec, per_line, 0

    def __iter__(self) -> "_BoundedLines":
        return self

    def __next__(self) -> str:
        line = self.text.readline(MAX_ITEM_CHARS + 1)
        if not line:
            raise StopIteration
        if self.per_line:
            self.taken = 0
        self.taken += len(line.rstrip("\r\n"))
        if self.taken > MAX_ITEM_CHARS:
            raise _line_too_long(self.spec)
        return line

    def row_done(self) -> None:
        self.taken = 0


def _csv_rows(text: io.TextIOBase, spec: str) -> Iterator[dict]:
    lines = _BoundedLines(text, spec, per_line=False)
    reader = csv.DictReader(lines)
    if reader.fieldnames is None:  # reads the header row, which has a budget of its own
        return
    lines.row_done()
    for row in reader:
        lines.row_done()
        yield row


#: Decoders made once (json.loads with options makes one per call). Numbers are parsed by the
#: C scanner itself unless a line holds a run of digits too long for an input integer: only
#: then does the strict hook (a Python call per number) see each of them.
_DECODER = json.JSONDecoder(parse_constant=reject_constant)
#: The C scanner of _DECODER: one value at an index, no space skipped, no trailing check.
_SCAN = make_scanner(_DECODER)  # type: ignore[arg-type]  # typeshed wants a scanner here
_STRICT_DECODER = json.JSONDecoder(parse_int=parse_int_strict, parse_constant=reject_constant)
_LONG_DIGITS = re.compile(r"\d{%d}" % (MAX_INPUT_DIGITS + 1))


def may_hold_long_int(text: str) -> bool:
    """Does JSON ``text`` hold a run of more digits than an input integer may have (as a
    number, or inside a string)? One search in C; only then must values be looked into."""
    return _LONG_DIGITS.search(text) is not None


def _loads(text: str, where: str):
    _check_depth(text, 0, len(text), where)
    decoder = _STRICT_DECODER if may_hold_long_int(text) else _DECODER
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON: {exc.msg}") from None


def _json_lines(text: io.TextIOBase, spec: str) -> Iterator:
    """The items of a JSON Lines stream, read in blocks. A line that is one plain JSON value
    (no surrounding space, shallow, no overlong run of digits) is parsed by the C scanner
    alone; any other line, blank or bad, takes :func:`_loads` (its checks and messages)."""
    scan, number, rest = _SCAN, 0, ""
    while True:
        block = text.read(_CHUNK)
        joined, held = rest + block, ""
        if block and joined.endswith("\r"):  # a CRLF may straddle two blocks
            joined, held = joined[:-1], "\r"
        if "\r" in joined:  # line ends as readline splits them: \r\n, \r or \n
            joined = joined.replace("\r\n", "\n").replace("\r", "\n")
        lines = joined.split("\n")
        rest = lines.pop() + held if block else ""
        if len(rest) > MAX_ITEM_CHARS:
            raise _line_too_long(spec)
        suspect = may_hold_long_int(joined)
        for line in lines:
            number += 1
            if len(line) > MAX_ITEM_CHARS:
                raise _line_too_long(spec)
            end = -1
            if not suspect and line.count("[") + line.count("{") <= MAX_ITEM_DEPTH:
                try:
                    value, end = scan(line, 0)
                except (StopIteration, json.JSONDecodeError):
                    pass
            if end != len(line):
                if not line.strip():
                    continue
                value = _loads(line, f"{spec} line {number}")
            yield value
        if not block:
            return


def _line_too_long(spec: str) -> UsageError:
    return UsageError(f"--items {spec}: an item (line or row) is longer than "
                      f"{MAX_ITEM_CHARS:,} characters")


def _check_depth(text: str, first: int, end: int, where: str) -> None:
    """Refuse an item nested deeper than MAX_ITEM_DEPTH; counting brackets first (in C) keeps
    the character-by-character scan off the common path."""
    if text.count("[", first, end) + text.count("{", first, end) > MAX_ITEM_DEPTH \
            and nesting_depth(text[first:end]) > MAX_ITEM_DEPTH:
        raise UsageError(f"--items {where}: an item is nested deeper than {MAX_ITEM_DEPTH} "
                         "levels")


def _json_array(text: io.TextIOBase, where: str) -> Iterator:
    """Yield the elements of a top-level JSON array without loading the whole file."""
    decoder = json.JSONDecoder(parse_int=parse_int_strict, parse_constant=reject_constant)
    buffer, position, started, done = "", 0, False, False
    while not done:
        chunk = text.read(_CHUNK)
        buffer = buffer[position:] + chunk
        position = 0
        at_end = not chunk
        while True:
            position = _skip_space(buffer, position)
            if position >= len(buffer):
                break
            char = buffer[position]
            if not started:
                if char != "[":
                    raise UsageError(f"--items {where} must hold a JSON array")
                started, position = True, position + 1
                continue
            if char == "]":
                done = True
                break
            if char == ",":
                position += 1
                continue
            try:
                value, end = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as exc:
                if at_end:
                    raise UsageError(f"--items {where}: not valid JSON: {exc.msg}") from None
                break  # the element continues in the next chunk
            except RecursionError:  # the C decoder's own guard, hit past ~1000 levels
                raise UsageError(f"--items {where}: an item is nested deeper than "
                                 f"{MAX_ITEM_DEPTH} levels") from None
            if end == len(buffer) and not at_end:
                break  # a number may continue in the next chunk
            if end - position > MAX_ITEM_CHARS:
                raise _too_long(where)
            _check_depth(buffer, position, end, where)
            yield value
            position = end
        if len(buffer) - position > MAX_ITEM_CHARS:  # unfinished, and already too long
            raise _too_long(where)
        if at_end and not done:
            raise UsageError(f"--items {where}: the JSON array is not closed")


_ITEM_ENCODER = json.JSONEncoder(separators=(",", ":"))  # made once (json.dumps: per call)


def item_line(value) -> str:
    """An item as one line of JSON Lines: compact, ASCII, exactly json.dumps's text (ints
    and strings, the common items, without an encoder call)."""
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is str:
        return encode_basestring_ascii(value)
    return _ITEM_ENCODER.encode(value)


def _too_long(where: str) -> UsageError:
    return UsageError(f"--items {where}: an element of the array is longer than "
                      f"{MAX_ITEM_CHARS:,} characters")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def list_objects(bucket: str, prefix: str, client=None) -> Iterator[dict]:
    """Every object under ``prefix``, page by page (ListObjectsV2), as ItemReader gives them."""
    from .storage import s3_reason, make_s3_client
    client = client or make_s3_client()
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield {"Key": obj["Key"], "Size": obj["Size"], "ETag": obj.get("ETag", ""),
                       "LastModified": obj["LastModified"].isoformat()
                       if hasattr(obj.get("LastModified"), "isoformat") else obj.get("LastModified"),
                       "StorageClass": obj.get("StorageClass", "STANDARD")}
    except Exception as exc:  # botocore errors share no narrower useful base
        raise UsageError(f"cannot list s3://{bucket}/{prefix}: {s3_reason(exc)}") from None


