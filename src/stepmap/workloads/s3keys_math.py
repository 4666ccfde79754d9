"""Exact counts of S3 object keys: strings whose UTF-8 encoding is n bytes.

The maths
---------
Let c1..c4 be the number of characters whose UTF-8 encoding is 1, 2, 3, 4
bytes long.  A string of n bytes is its first character (k bytes, c_k
choices) followed by a string of n-k bytes, so

    f(0) = 1,   f(n) = c1 f(n-1) + c2 f(n-2) + c3 f(n-3) + c4 f(n-4),

with f(negative) = 0.  This is a linear recurrence with characteristic
polynomial P(x) = x^4 - c1 x^3 - c2 x^2 - c3 x - c4.

Jumping (Fiduccia): for any sequence g obeying P's recurrence, the map
x^k -> g(k) is linear and kills multiples of P, so g(m) is g applied to
x^m mod P.  Taking g's window at indices -3..0, i.e. (0, 0, 0, 1), gives

    f(m) = [x^3] (x^(m+3) mod P)            for m >= -3,

so f(n) costs O(log n) polynomial squarings mod P (square-and-multiply,
where "multiply" is only a shift by x).  The same argument for the prefix
sums S(n) = sum_{i<n} f(i), which obey the order-5 recurrence of
Q(x) = (x - 1) P(x) with window S(-3..1) = (0, 0, 0, 0, 1), gives

    S(m) = [x^4] (x^(m+3) mod Q),

so a whole range sum is S(hi) - S(lo) in O(log hi) big-integer operations.

Why several methods
-------------------
* ``sum_closed``  -- whole-range sum in O(log hi) big multiplications; the
  fastest way to get one big total.
* ``sum_jump``    -- jump to ``lo`` then iterate the recurrence (only
  small x big products).  This is the per-batch method of a distributed
  run: each worker sums its own slice [lo, hi).
* ``f_multinomial`` / ``sum_multinomial`` -- the original per-item formula
  (sum of multinomials over compositions into 1..4 byte characters).  It is
  slow (O(n^3) big terms) and kept only as an independent cross-check and a
  benchmark baseline.

Big integers are done in ``gmpy2.mpz`` when available (much faster
multiplication for huge operands); set ``STEPMAP_BIGINT=python`` to force
plain ``int``.  Every public function returns plain Python ``int``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Iterator

from .. import bigint

Counts = tuple[int, int, int, int]

ALPHABETS: dict[str, Counts] = {
    # Character counts as used in the published article.
    "article": (128, 1863, 42451, 78341),
    # Every Unicode scalar value (all code points except surrogates).
    "scalar": (128, 1920, 61440, 1048576),
}

MAX_EXPLICIT_COUNT = 10**7

# One switch for the whole package (stepmap.bigint reads STEPMAP_BIGINT once at import).
BACKEND = bigint.BACKEND
#: Below this many lengths the numbers are small (< ~10k digits): CPython's ints are as fast
#: and importing gmpy2 (about 25 ms) would dominate a small job's start-up.
GMP_THRESHOLD = 4096


@functools.cache
def _mpz():
    import gmpy2

    return gmpy2.mpz


def _number_type(n: int | None):
    """The integer type to work in for lengths up to ``n`` (None: always the fast one)."""
    if BACKEND == "gmpy2" and (n is None or n >= GMP_THRESHOLD):
        return _mpz()
    return int


# ---------------------------------------------------------------- validation

def _check_index(name: str, value) -> int:
    # bool is an int subclass; True as an index is almost surely a bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_range(lo, hi) -> tuple[int, int]:
    _check_index("lo", lo)
    _check_index("hi", hi)
    if lo > hi:
        raise ValueError(f"need lo <= hi, got lo={lo}, hi={hi}")
    return lo, hi


def _check_counts(counts) -> Counts:
    counts = tuple(counts)
    if len(counts) != 4 or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
    ):
        raise ValueError(f"counts must be 4 non-negative ints, got {counts!r}")
    return counts


# ------------------------------------------------------------------ alphabets

@functools.cache
def assigned_counts() -> tuple[Counts, str]:
    """Counts of assigned, non-surrogate code points per UTF-8 length,
    from this Python's ``unicodedata``, and its Unicode version."""
    import unicodedata  # here: only the 'assigned' alphabet needs it
    buckets = ((0, 0x80), (0x80, 0x800), (0x800, 0x10000), (0x10000, 0x110000))
    counts = []
    for start, stop in buckets:
        # Counter over map() keeps the 1.1M-code-point loop in C.
        cats = Counter(map(unicodedata.category, map(chr, range(start, stop))))
        counts.append(stop - start - cats["Cn"] - cats["Cs"])
    return tuple(counts), unicodedata.unidata_version  # type: ignore[return-value]


_CHOICES = "article, scalar, assigned or c1,c2,c3,c4"
#: compiled (and cached by re) on first use: not every run parses one
_EXPLICIT = r"\s*([0-9]+)\s*,\s*([0-9]+)\s*,\s*([0-9]+)\s*,\s*([0-9]+)\s*"


def resolve_alphabet(spec: str) -> tuple[Counts, str]:
    """Turn a user spec into (counts, human-readable description)."""
    if not isinstance(spec, str):
        raise ValueError(f"alphabet must be a string: expected {_CHOICES}")
    name = spec.strip().lower()
    if name in ALPHABETS:
        return ALPHABETS[name], f"{name} {ALPHABETS[name]}"
    if name == "assigned":
        counts, version = assigned_counts()
        return counts, f"assigned (Unicode {version}: {counts})"
    if "," in spec:
        # [0-9] not \d: int() would also accept other scripts' digits.
        m = re.fullmatch(_EXPLICIT, spec)
        explicit = tuple(int(g) for g in m.groups()) if m else ()
        if len(explicit) != 4 or max(explicit) > MAX_EXPLICIT_COUNT:
            raise ValueError(
                f"bad alphabet {spec!r}: expected {_CHOICES} with c1..c4 "
                f"decimal integers from 0 to {MAX_EXPLICIT_COUNT}"
            )
        counts = (explicit[0], explicit[1], explicit[2], explicit[3])
        return counts, f"explicit {counts}"
    raise ValueError(f"unknown alphabet {spec!r}: expected {_CHOICES}")


# ---------------------------------------------- polynomial arithmetic mod M
# A polynomial mod a monic M of degree d is a list of d coefficients, low
# first.  ``rec`` describes M by x^d = sum rec[i] x^i (mod M); its entries are
# small, so reduction is linear-time while squaring is the only real cost.

def _reduce(r: list, rec: tuple) -> list:
    d = len(rec)
    for k in range(len(r) - 1, d - 1, -1):
        top = r[k]
        if top:
            for i, c in enumerate(rec):
                if c:
                    r[k - d + i] += c * top
    return r[:d]


def _sqr_mod(a: list, rec: tuple) -> list:
    d = len(a)
    r = [0] * (2 * d - 1)
    for i, ai in enumerate(a):
        if not ai:
            continue
        r[2 * i] += ai * ai
        twice = ai << 1  # a_i a_j appears twice in a square: halve the products
        for j in range(i + 1, d):
            if a[j]:
                r[i + j] += twice * a[j]
    return _reduce(r, rec)


def _mulx_mod(a: list, rec: tuple) -> list:
    return _reduce([0, *a], rec)


def _x_pow_mod(e: int, rec: tuple, Z=None) -> list:
    """x^e mod M by left-to-right square-and-multiply-by-x.  ``Z`` is the
    big-integer type to work in (defaults to the module backend)."""
    Z = _number_type(e) if Z is None else Z
    r = [Z(1)] + [Z(0)] * (len(rec) - 1)
    for bit in bin(e)[2:]:
        r = _sqr_mod(r, rec)
        if bit == "1":
            r = _mulx_mod(r, rec)
    return r


def _rec_p(counts: Counts) -> tuple:
    # P(x) = x^4 - c1 x^3 - c2 x^2 - c3 x - c4  =>  x^4 = c4 + c3 x + c2 x^2 + c1 x^3
    c1, c2, c3, c4 = counts
    return (c4, c3, c2, c1)


def _rec_q(counts: Counts) -> tuple:
    # Q(x) = (x - 1) P(x)
    #      = x^5 - (c1+1) x^4 + (c1-c2) x^3 + (c2-c3) x^2 + (c3-c4) x + c4
    c1, c2, c3, c4 = counts
    return (-c4, c4 - c3, c3 - c2, c2 - c1, c1 + 1)


def _state(n: int, counts: Counts, Z=None) -> tuple:
    """(f(n), f(n-1), f(n-2), f(n-3)) in the working integer type."""
    rec = _rec_p(counts)
    r = _x_pow_mod(n, rec, Z)  # x^n: its x^3 coefficient is f(n-3)
    window = [r[3]]
    for _ in range(3):
        r = _mulx_mod(r, rec)
        window.append(r[3])
    return tuple(reversed(window))


def _prefix_sum(m: int, counts: Counts, Z=None):
    """S(m) = sum_{i<m} f(i) in the working integer type."""
    return _x_pow_mod(m + 3, _rec_q(counts), Z)[4]


# ---------------------------------------------------------------- public API

def f_at(n: int, counts: Counts) -> int:
    """f(n) in O(log n) big-integer operations."""
    _check_index("n", n)
    counts = _check_counts(counts)
    return int(_x_pow_mod(n + 3, _rec_p(counts))[3])


def f_state(n: int, counts: Counts) -> tuple[int, int, int, int]:
    """(f(n), f(n-1), f(n-2), f(n-3)), f of negatives being 0."""
    _check_index("n", n)
    counts = _check_counts(counts)
    return tuple(int(v) for v in _state(n, counts))  # type: ignore[return-value]


def _iterate(lo: int, hi: int, counts: Counts) -> Iterator:
    # Only small x big products per step: linear in the size of f(n).
    c1, c2, c3, c4 = counts
    a, b, c, d = _state(lo, counts)
    for _ in range(lo, hi):
        yield a
        a, b, c, d = c1 * a + c2 * b + c3 * c + c4 * d, a, b, c


def f_values(lo: int, hi: int, counts: Counts) -> Iterator[int]:
    """f(lo), ..., f(hi-1): jump to lo, then iterate the recurrence."""
    lo, hi = _check_range(lo, hi)  # eagerly, not at the first next()
    counts = _check_counts(counts)
    return (int(v) for v in _iterate(lo, hi, counts))


def sum_jump(lo: int, hi: int, counts: Counts) -> int:
    """sum_{lo<=n<hi} f(n) by jumping to lo and iterating (per-batch method)."""
    lo, hi = _check_range(lo, hi)
    counts = _check_counts(counts)
    total = _number_type(hi)(0)
    for v in _iterate(lo, hi, counts):
        total += v
    return int(total)


def sum_closed(lo: int, hi: int, counts: Counts) -> int:
    """sum_{lo<=n<hi} f(n) = S(hi) - S(lo) in O(log hi) big operations."""
    lo, hi = _check_range(lo, hi)
    counts = _check_counts(counts)
    if lo == hi:
        return 0
    low = _prefix_sum(lo, counts) if lo else 0
    return int(_prefix_sum(hi, counts) - low)


def f_multinomial(n: int, counts: Counts) -> int:
    """f(n) by the original formula: sum over i+2j+3k+4l = n of
    (i+j+k+l)! / (i! j! k! l!) * c1^i c2^j c3^k c4^l.  Slow, O(n^3) terms."""
    _check_index("n", n)
    counts = _check_counts(counts)
    _Z = _number_type(None)
    fact = [_Z(1)]
    for m in range(1, n + 1):
        fact.append(fact[-1] * m)
    pw1, pw2, pw3, pw4 = (
        [_Z(c) ** e for e in range(n // size + 1)]
        for size, c in zip((1, 2, 3, 4), counts)
    )
    total = _Z(0)
    for l in range(n // 4 + 1):
        for k in range((n - 4 * l) // 3 + 1):
            rest = n - 4 * l - 3 * k
            lk = pw3[k] * pw4[l]
            for j in range(rest // 2 + 1):
                i = rest - 2 * j
                multinomial = fact[i + j + k + l] // (fact[i] * fact[j] * fact[k] * fact[l])
                total += multinomial * pw1[i] * pw2[j] * lk
    return int(total)


def sum_multinomial(lo: int, hi: int, counts: Counts) -> int:
    """sum_{lo<=n<hi} f_multinomial(n)."""
    lo, hi = _check_range(lo, hi)
    counts = _check_counts(counts)
    return sum(f_multinomial(n, counts) for n in range(lo, hi))
