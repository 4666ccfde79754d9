"""s3keys: how many distinct S3 object keys have a UTF-8 encoding of exactly n bytes.

Run input (the same JSON the AWS engine's start-execution takes)::

    {"size": 1024}                      items are the lengths 0..size-1 (the original job)
    {"lengths": "1-1024"}               any inclusive range of lengths instead
    "alphabet": article|scalar|assigned|"c1,c2,c3,c4"    (default article)
    "method":   auto|jump|closed|multinomial               (default auto)

The items are a range of lengths and stay one (see :mod:`stepmap.job`): compute sums the
batch's range directly, never item by item. Each compute call returns Σ f(n) over its
item(s) as a decimal string; reduce adds them up (one result passes through as it is).
The maths lives in :mod:`stepmap.workloads.s3keys_math`.
"""

from __future__ import annotations

import re
from itertools import groupby
from typing import Any, Iterable, Sequence

from .. import bigint
from ..errors import InvalidEvent, UsageError
from ..job import Param, Params, Start, Workload, event_items, event_range
from . import s3keys_math as maths

#: Largest size accepted: the total of size 10^8 has about 215 million digits (≈ 90 MB as an
#: int, 215 MB as the decimal string a result carries; task.MAX_RESULT_BYTES is 256 MiB).
MAX_LENGTH = 100_000_000
#: With method auto, a run of consecutive lengths at least this long is summed in closed form
#: (two O(log n) prefix sums); shorter runs jump once and iterate (measured crossover ~256).
AUTO_CLOSED_SPAN = 256
#: auto (the default): closed form for long runs, jump for short ones; one task for the range
CHOICES = ("auto", "jump", "closed", "multinomial")
METHODS = {
    "jump": maths.sum_jump,  # per batch: O(log n) jump to its first length, then iterate
    "closed": maths.sum_closed,  # per batch: S(hi) - S(lo), O(log n) each; best for one big range
    "multinomial": maths.sum_multinomial,  # the original per-item triple loop (slow; cross-checks)
}
#: compiled (and cached by re) on first use: not every run parses one; [0-9]: \d takes any script
_RANGE = r"\s*([0-9]{1,9})\s*-\s*([0-9]{1,9})\s*"


class S3Keys(Workload):
    name = "s3keys"
    summary = "count the S3 object keys whose UTF-8 encoding has each length (exact)"
    parameters = {
        "size": Param("items are the lengths 0..size-1; the total is their sum (default 1024)",
                      int),
        "lengths": Param("an inclusive range A-B of lengths instead of size (1-1024 is the real "
                         "S3 key range)"),
        "alphabet": Param("article (default) | scalar | assigned | c1,c2,c3,c4"),
        "method": Param("auto (default: the fastest; one closed-form task for the range) | "
                        "jump | closed | multinomial (the original formula)"),
    }

    def start(self, event: dict) -> Start:
        params = Params(event)
        params.reject_unknown(self.parameters)
        lo, hi = _lengths(params)
        alphabet = params.string("alphabet") or "article"
        try:
            counts, described = maths.resolve_alphabet(alphabet)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        method = params.string("method", default="auto")
        if method not in CHOICES:
            raise UsageError(f"unknown method {method!r}: expected {', '.join(CHOICES)}")
        job: dict[str, Any] = {"alphabet": alphabet, "counts": list(counts), "method": method}
        if "size" in event:
            job["size"] = hi
        count = hi - lo
        return Start(params=job, items=range(lo, hi), count=count,
                     summary=f"lengths {lo}-{hi - 1}, alphabet {described}, method {method}",
                     # one task for the whole range is fastest with the closed form
                     batch_hint=count if method in ("closed", "auto") else None)

    def compute(self, event: dict) -> str:
        items = event_items(event)
        lengths = event_range(event)
        if lengths is not None:  # a range batch: its items all share one BatchInput
            counts, method = _shared(items[:1])
            _index(items[0]), _index(items[-1])  # the whole range is valid if both ends are
            return bigint.to_decimal(_sum(lengths.start, lengths.stop, counts, method))
        counts, method = _shared(items)
        indices = sorted(_index(item) for item in items)
        total = 0
        # consecutive lengths are summed in one go (jump once, then iterate)
        for _, pairs in groupby(enumerate(indices), key=lambda pair: pair[1] - pair[0]):
            run = [n for _, n in pairs]
            total += _sum(run[0], run[-1] + 1, counts, method)
        return bigint.to_decimal(total)

    def reduce(self, outputs: Iterable) -> str:
        total, only = 0, None
        for count, output in enumerate(outputs):
            if not isinstance(output, str):
                raise InvalidEvent(f"an s3keys result must be a decimal string, got {output!r:.40}")
            if count == 0:  # kept as text: one result (one range task) needs no conversion
                only = bigint.check_decimal(output)
                continue
            if only is not None:
                total, only = bigint.from_decimal(only), None
            total += bigint.from_decimal(output)
        if only is not None:
            return only.lstrip("0") or "0"
        return bigint.to_decimal(total)


def _sum(lo: int, hi: int, counts: maths.Counts, method: str) -> int:
    if method == "auto":
        method = "closed" if hi - lo >= AUTO_CLOSED_SPAN else "jump"
    return METHODS[method](lo, hi, counts)


def _lengths(params: Params) -> tuple[int, int]:
    if "lengths" in params.event and "size" in params.event:
        raise UsageError("give either size or lengths, not both")
    text = params.string("lengths")
    if text is None:
        size = params.integer("size", default=1024, low=1, high=MAX_LENGTH)
        return 0, size
    match = re.fullmatch(_RANGE, text)
    if not match:
        raise UsageError(f"lengths must look like A-B (e.g. 1-1024), got {text[:40]!r}")
    lo, hi = int(match.group(1)), int(match.group(2))
    if lo > hi:
        raise UsageError(f"lengths {lo}-{hi} is reversed: the first must not exceed the second")
    if hi >= MAX_LENGTH:
        raise UsageError(f"lengths must be below {MAX_LENGTH:,}, got {hi:,}")
    return lo, hi + 1


def _shared(items: Sequence[dict]) -> tuple[maths.Counts, str]:
    first = items[0]
    for item in items[1:]:
        if item.get("counts") != first.get("counts") or item.get("method") != first.get("method"):
            raise InvalidEvent("a batch mixes items with different counts or methods")
    counts, method = first.get("counts"), first.get("method", "auto")
    if (not isinstance(counts, list) or len(counts) != 4 or
            not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 10**7
                    for c in counts)):
        raise InvalidEvent("'counts' must be a list of four non-negative integers")
    if method not in CHOICES:
        raise InvalidEvent(f"unknown method {method!r}")
    return (counts[0], counts[1], counts[2], counts[3]), method


def _index(item: dict) -> int:
    n = item.get("index")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < MAX_LENGTH:
        raise InvalidEvent(f"'index' must be an integer length from 0 to {MAX_LENGTH - 1:,}, "
                           f"got {n!r:.40}")
    return n


WORKLOAD = S3Keys()
