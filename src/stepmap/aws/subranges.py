"""A long range on AWS: the map lists sub-ranges, never the items one by one.

    start: range(a, a+N), N > RANGE_LIST_ITEMS
      ──► items/<request-id>.json  [{"index": {"Range": [v0, v1]}, "position": [p0, p1]}, ...]
          (M <= RANGE_MAP_ITEMS objects; read by the Distributed Map's S3 ItemReader)
      ──► child  {"index": {"Range": [v0, v1]}, "position": [p0, p1], "params": {...}}
          (or an ItemBatcher batch of such items)
      ──► compute: the job contract's range event {"Items": {"Range": [v0, v1]}, ...}
      ──► ResultWriter entry whose Input is that child input (constant size, whatever N)

A map item's ``position`` is then the [first, end) span of item positions it stands for, so
the reduce step proves exactly-once coverage span by span (verify.py) and checks each
span's range against the run's own range arithmetically. A resume lists the unfinished
positions the same way (``unfinished``). Sub-ranges always go through the S3 ItemReader:
the inline map's position is the map index (``$$.Map.Item.Index``), not an item span.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, TypeGuard

from ..errors import InvalidEvent
from ..job import ITEM_KEY, RANGE_KEY, is_compact_range
from .names import POSITION_KEY

#: A range of at most this many items is listed item by item, as any item list (each item
#: its own child: the most parallel map); a longer one is cut into sub-ranges.
RANGE_LIST_ITEMS = 1000
#: A long range is cut into at most this many sub-ranges (Lambda's default concurrency
#: quota per account), longer ones when the workload's batch hint asks for them.
RANGE_MAP_ITEMS = 1000


def span_length(count: int, hint: int | None) -> int | None:
    """The sub-range length for a range of ``count`` items, or None to list its items."""
    if count <= RANGE_LIST_ITEMS:
        return None
    return max(hint or 1, math.ceil(count / RANGE_MAP_ITEMS))


def plan(items: Any, hint: int | None) -> tuple[range, int] | None:
    """A start's items as (range, sub-range length); None when they are not a long range
    (list them)."""
    if not is_compact_range(items):
        return None
    length = span_length(len(items), hint)
    return None if length is None else (items, length)


def map_items(values: range, length: int,
              spans: Iterable[tuple[int, int]] | None = None) -> list[dict]:
    """The map items of ``values`` at the given [first, end) position spans (all of them
    by default), each cut into pieces of at most ``length`` items."""
    spans = spans if spans is not None else [(0, len(values))]
    out = []
    for first, end in spans:
        for p0 in range(first, end, length):
            p1 = min(p0 + length, end)
            out.append({ITEM_KEY: {RANGE_KEY: [values[p0], values[p1 - 1] + 1]},
                        POSITION_KEY: [p0, p1]})
    return out


def unfinished(values: range, length: int, gaps: list[tuple[int, int]]) -> list[dict]:
    """The map items of a resume: the positions without a result, as sub-ranges."""
    return map_items(values, length, gaps)


def is_span_item(item: Any) -> bool:
    """A child item standing for a sub-range: its position is a [first, end] list."""
    return isinstance(item, Mapping) and isinstance(item.get(POSITION_KEY), list)


def job_event(items: list, params: dict) -> dict:
    """The job contract's event for a child's sub-range items (one, or an ItemBatcher batch
    in position order): one range event when their values are consecutive, else (a batch
    across a resume's gap) the items listed, which only that batch's items cost."""
    bounds = [_bounds(item) for item in items]
    if all(before[1] == after[0] for before, after in zip(bounds, bounds[1:])):
        return {"Items": {RANGE_KEY: [bounds[0][0], bounds[-1][1]]}, "BatchInput": params}
    return {"Items": [{ITEM_KEY: v} for first, end in bounds for v in range(first, end)],
            "BatchInput": params}


def _bounds(item: Any) -> tuple[int, int]:
    """[v0, v1) of one sub-range item, checked against its position span's length."""
    value = item.get(ITEM_KEY) if isinstance(item, Mapping) else None
    bounds = value.get(RANGE_KEY) if isinstance(value, Mapping) else None
    span = item.get(POSITION_KEY) if isinstance(item, Mapping) else None
    if not (isinstance(value, Mapping) and set(value) == {RANGE_KEY} and _pair(bounds)
            and _pair(span) and 0 <= span[0] < span[1]
            and bounds[1] - bounds[0] == span[1] - span[0]):
        raise InvalidEvent(f"a sub-range item must be {{{ITEM_KEY!r}: {{{RANGE_KEY!r}: [v0, v1]}}, "
                           f"{POSITION_KEY!r}: [p0, p1]}} with v1 - v0 = p1 - p0 > 0")
    return bounds[0], bounds[1]


def _pair(value: Any) -> TypeGuard[list[int]]:
    return (isinstance(value, list) and len(value) == 2
            and all(type(v) is int for v in value))
