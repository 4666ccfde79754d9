"""Exact integers across JSON: big results travel as decimal strings, never as floats.

CPython refuses int<->str conversions past 4300 digits (CVE-2020-10735 mitigation). Our
totals have millions of digits, so the limit is lifted once, here, for the processes that
import stepmap; untrusted JSON never reaches int() without a length check first
(see :func:`parse_int_strict`), which is what the limit protects against.
"""

from __future__ import annotations

import functools
import sys

from .errors import UsageError

sys.set_int_max_str_digits(0)

#: Past these sizes CPython's quadratic int<->str conversion loses to gmpy2's (if installed).
_FAST_TO_DECIMAL_BITS = 20_000
_FAST_FROM_DECIMAL_DIGITS = 5_000


@functools.cache
def _gmpy2():
    """gmpy2, imported on first need: it costs ~25 ms, more than a small job takes."""
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
    if value.bit_length() > _FAST_TO_DECIMAL_BITS and _gmpy2() is not None:
        return _gmpy2().mpz(value).digits()
    return str(value)


def from_decimal(text: str) -> int:
    """Parse a result's decimal string exactly (results are trusted: written by our own steps)."""
    if not isinstance(text, str):
        raise TypeError(f"expected a decimal string, got {type(text).__name__}")
    body = text[1:] if text[:1] == "-" else text
    if not body.isdigit() or not body.isascii():
        raise ValueError(f"not a decimal integer: {text[:40]!r}")
    if len(body) > _FAST_FROM_DECIMAL_DIGITS and _gmpy2() is not None:
        return int(_gmpy2().mpz(text))
    return int(text)


def parse_int_strict(text: str) -> int:
    """json parse_int hook for untrusted input: refuses absurdly long numbers up front."""
    digits = text.lstrip("-")
    if len(digits) > MAX_INPUT_DIGITS:
        raise UsageError(f"number with {len(digits)} digits in the input is too large")
    return int(text)


def reject_constant(name: str):
    """json parse_constant hook: NaN and Infinity are not JSON and never valid input."""
    raise UsageError(f"{name} is not allowed in the input")
