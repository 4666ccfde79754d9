"""Exact integers across JSON: big results travel as decimal strings, never as floats.

CPython refuses int<->str conversions past 4300 digits (CVE-2020-10735 mitigation). Our
totals have millions of digits, so the limit is lifted once, here, for the processes that
import stepmap; untrusted JSON never reaches int() without a length check first
(see :func:`parse_int_strict`), which is what the limit protects against.

One switch picks the big-integer code for every process of a run: gmpy2 when it is installed,
pure Python when it is not or when ``STEPMAP_BIGINT=python`` is set. Pure Python means pure
Python everywhere, decimal conversion included: then a big int becomes decimal text by
divide and conquer through the standard library's ``decimal`` module (as CPython 3.12's
``_pylong`` does; 3.11's own ``str(int)`` is quadratic, hours for 20 million digits) and
decimal text becomes an int by divide and conquer on powers of five.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

from .errors import InvalidEvent, UsageError

sys.set_int_max_str_digits(0)

#: Read once at import so worker processes and the parent agree for a run.
FORCE_PYTHON = os.environ.get("STEPMAP_BIGINT", "").strip().lower() == "python"
BACKEND = "python" if FORCE_PYTHON or importlib.util.find_spec("gmpy2") is None else "gmpy2"

#: Past these sizes CPython's quadratic int<->str conversion loses to gmpy2's (if installed).
_FAST_TO_DECIMAL_BITS = 20_000
_FAST_FROM_DECIMAL_DIGITS = 5_000


@functools.cache
def _gmpy2():
    """gmpy2, imported on first need: it costs ~25 ms, more than a small job takes."""
    if BACKEND != "gmpy2":
        return None
    try:
        import gmpy2
    except ImportError:  # the 'fast' extra is not installed: pure Python, same results
        return None
    return gmpy2

#: Decimal strings longer than this are refused when parsing *input* (not results).
MAX_INPUT_DIGITS = 30


def to_decimal(value: int) -> str:
    """Exact decimal string of an int, fast for millions of digits when gmpy2 is present."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    if value.bit_length() <= _FAST_TO_DECIMAL_BITS:
        return str(value)
    if _gmpy2() is not None:
        return _gmpy2().mpz(value).digits()
    return _python_to_decimal(value)


class NotDecimal(InvalidEvent, ValueError):
    """A result that should be a decimal string is not one (a ValueError, as int() raises,
    and an InvalidEvent, so the CLI and the reduce Lambda report it in one line)."""


def from_decimal(text: str) -> int:
    """Parse a result's decimal string exactly: ASCII digits with an optional '-' sign, no
    spaces, no '_' (int() would take '1_000', ' 12' or Arabic-Indic digits)."""
    if not isinstance(text, str):
        raise TypeError(f"expected a decimal string, got {type(text).__name__}")
    body = text[1:] if text[:1] == "-" else text
    if not body.isdigit() or not body.isascii():
        raise NotDecimal(f"a result is not a decimal integer: {text[:40]!r}")
    if len(body) <= _FAST_FROM_DECIMAL_DIGITS:
        return int(text)
    if _gmpy2() is not None:
        return int(_gmpy2().mpz(text))
    value = _python_from_decimal(body)
    return -value if text[:1] == "-" else value


def check_decimal(text: str) -> str:
    """``text`` if it is what :func:`from_decimal` parses (checked without converting it),
    else NotDecimal: for a result kept as text."""
    body = text[1:] if text[:1] == "-" else text
    if not body.isdigit() or not body.isascii():
        raise NotDecimal(f"a result is not a decimal integer: {text[:40]!r}")
    return text


def _python_to_decimal(value: int) -> str:
    """str(value) in O(M(n) log n): split the binary value in halves, rebuild it as a Decimal
    (libmpdec multiplies huge numbers by number-theoretic transform), print that."""
    import decimal

    if value < 0:
        return "-" + _python_to_decimal(-value)
    powers: dict[int, decimal.Decimal] = {}

    def two_to(bits: int) -> decimal.Decimal:
        if bits not in powers:
            half = bits >> 1
            powers[bits] = (decimal.Decimal(2) ** bits if bits <= 128
                            else two_to(half) * two_to(bits - half))
        return powers[bits]

    def convert(n: int, bits: int) -> decimal.Decimal:
        if bits <= 1024:
            return decimal.Decimal(n)
        half = bits >> 1
        high = n >> half
        return convert(n - (high << half), half) + convert(high, bits - half) * two_to(half)

    with decimal.localcontext() as context:
        context.prec, context.Emax, context.Emin = (decimal.MAX_PREC, decimal.MAX_EMAX,
                                                    decimal.MIN_EMIN)
        context.traps[decimal.Inexact] = True
        return format(convert(value, value.bit_length()), "f")


def _python_from_decimal(digits: str) -> int:
    """int(digits) in O(n^1.58) (Karatsuba): value = high * 10^k + low, where
    10^k = 5^k << k; CPython 3.11's own int(str) is quadratic."""
    powers: dict[int, int] = {}

    def five_to(k: int) -> int:
        if k not in powers:
            half = k >> 1
            powers[k] = 5 ** k if k <= 2048 else five_to(half) * five_to(k - half)
        return powers[k]

    def convert(first: int, end: int) -> int:
        if end - first <= 2048:
            return int(digits[first:end])
        middle = (first + end + 1) >> 1
        k = end - middle
        return convert(middle, end) + ((convert(first, middle) * five_to(k)) << k)

    return convert(0, len(digits))


def parse_int_strict(text: str) -> int:
    """json parse_int hook for untrusted input: refuses absurdly long numbers up front, and
    anything but ASCII digits (int() alone would take '²'-like digits of other scripts)."""
    digits = text[1:] if text[:1] == "-" else text
    if not (digits.isascii() and digits.isdigit()):
        raise UsageError(f"not an integer: {text[:40]!r}")
    if len(digits) > MAX_INPUT_DIGITS:
        raise UsageError(f"number with {len(digits)} digits in the input is too large")
    return int(text)


def flag_int(text: str) -> int:
    """An integer option's value: optional sign and ASCII digits only. int() accepts '４'
    (a full-width four) and '1_000'."""
    body = text.strip()
    digits = body[1:] if body[:1] in "+-" else body
    if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_INPUT_DIGITS:
        raise ValueError(text)
    return int(body)


def flag_float(text: str) -> float:
    """A number option's value: ASCII only and finite (float() accepts '４', 'nan', 'inf')."""
    body = text.strip()
    if not body.isascii() or not any(c.isdigit() for c in body) or "_" in body \
            or len(body) > 40:
        raise ValueError(text)
    value = float(body)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


# argparse names the type in its message: "argument --workers: invalid integer value: '４'"
flag_int.__name__, flag_float.__name__ = "integer", "number"


def reject_constant(name: str):
    """json parse_constant hook: NaN and Infinity are not JSON and never valid input."""
    raise UsageError(f"{name} is not allowed in the input")
