"""Tests for stepmap.workloads.s3keys_math (big integers compared exactly)."""

import itertools
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from stepmap.workloads import s3keys_math as m

sys.set_int_max_str_digits(0)

ARTICLE = m.ALPHABETS["article"]
SCALAR = m.ALPHABETS["scalar"]
EXPLICIT = (3, 0, 7, 2)
ALL_COUNTS = [ARTICLE, SCALAR, m.assigned_counts()[0], EXPLICIT]
SRC = str(Path(m.__file__).resolve().parents[2])


# ------------------------------------------------------- published figures

def _check_published_sum(total):
    s = str(total)
    assert (len(s), s[:18], s[-12:]) == (2206, "167745601878906766", "339608429457")


def test_published_sum_jump():
    _check_published_sum(m.sum_jump(0, 1024, ARTICLE))


def test_published_sum_closed():
    _check_published_sum(m.sum_closed(0, 1024, ARTICLE))


def test_published_sum_f_values():
    _check_published_sum(sum(m.f_values(0, 1024, ARTICLE)))


def test_published_f_1024():
    s = str(m.f_at(1024, ARTICLE))
    assert (len(s), s[:18], s[-10:]) == (2208, "238394416015948428", "2381486823")
    assert m.f_state(1025, ARTICLE)[1] == int(s)


# ------------------------------------------------- independent cross-checks

def test_f_at_matches_multinomial_article():
    for n in range(201):
        assert m.f_at(n, ARTICLE) == m.f_multinomial(n, ARTICLE), n


@pytest.mark.parametrize(
    "counts", [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 5), (1, 1, 1, 1), (2, 3, 5, 7), SCALAR]
)
def test_f_at_matches_multinomial_other_counts(counts):
    for n in range(61):
        assert m.f_at(n, counts) == m.f_multinomial(n, counts), n


def test_small_values_by_hand():
    # Fibonacci for (1,1,0,0): compositions of n into 1s and 2s.
    assert [m.f_at(n, (1, 1, 0, 0)) for n in range(10)] == [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]
    assert list(m.f_values(0, 5, (2, 0, 0, 0))) == [1, 2, 4, 8, 16]
    assert m.f_at(0, (0, 0, 0, 0)) == 1 and m.f_at(3, (0, 0, 0, 0)) == 0
    c1, c2, c3, c4 = ARTICLE
    assert m.f_state(0, ARTICLE) == (1, 0, 0, 0)
    assert m.f_state(2, ARTICLE) == (c1 * c1 + c2, c1, 1, 0)
    assert m.f_state(3, ARTICLE)[0] == c1 ** 3 + 2 * c1 * c2 + c3


def test_f_state_consistent_with_f_at():
    for n in (0, 1, 2, 3, 4, 5, 17, 100, 1000):
        expected = tuple(m.f_at(k, ARTICLE) if k >= 0 else 0 for k in range(n, n - 4, -1))
        assert m.f_state(n, ARTICLE) == expected


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")  # strict: rejects surrogates, overlongs, > U+10FFFF
        return True
    except UnicodeDecodeError:
        return False


def test_scalar_brute_force_all_byte_strings_up_to_2():
    for n in range(3):
        count = sum(_valid_utf8(bytes(t)) for t in itertools.product(range(256), repeat=n))
        assert m.f_at(n, SCALAR) == count


# Byte classes on which the strict UTF-8 decoder behaves uniformly (Unicode
# Table 3-7): ASCII, three continuation ranges (E0/ED/F0/F4 restrict the second
# byte by them), and the lead-byte groups.  Enumerating one representative per
# class weighted by class size counts all n-byte strings without the recurrence.
_CLASS_BOUNDS = [0x00, 0x80, 0x90, 0xA0, 0xC0, 0xC2, 0xE0, 0xE1, 0xED, 0xEE, 0xF0, 0xF1, 0xF4, 0xF5, 0x100]
_CLASSES = [(lo, hi - lo) for lo, hi in zip(_CLASS_BOUNDS, _CLASS_BOUNDS[1:])]


def _count_valid_by_classes(n):
    total = 0
    for combo in itertools.product(_CLASSES, repeat=n):
        if _valid_utf8(bytes(rep for rep, _ in combo)):
            weight = 1
            for _, size in combo:
                weight *= size
            total += weight
    return total


def test_byte_classes_agree_with_full_brute_force():
    # Validates the class model itself on everything up to 2 bytes.
    for n in range(3):
        full = sum(_valid_utf8(bytes(t)) for t in itertools.product(range(256), repeat=n))
        assert _count_valid_by_classes(n) == full


@pytest.mark.parametrize("n", [3, 4])
def test_scalar_byte_class_enumeration(n):
    assert m.f_at(n, SCALAR) == _count_valid_by_classes(n)


def test_scalar_counts_from_encoder():
    counts = [0, 0, 0, 0]
    for cp in range(0x110000):
        try:
            counts[len(chr(cp).encode("utf-8")) - 1] += 1
        except UnicodeEncodeError:  # lone surrogates
            pass
    assert tuple(counts) == SCALAR


# -------------------------------------------- all methods agree on ranges

RANGES = [(0, 0), (5, 5), (0, 1), (0, 4), (0, 50), (1, 2), (3, 7), (17, 130), (250, 251), (999, 1100)]


@pytest.mark.parametrize("counts", ALL_COUNTS, ids=["article", "scalar", "assigned", "explicit"])
def test_range_methods_agree(counts):
    for lo, hi in RANGES:
        closed = m.sum_closed(lo, hi, counts)
        assert closed == m.sum_jump(lo, hi, counts), (lo, hi)
        assert closed == sum(m.f_values(lo, hi, counts)), (lo, hi)
        assert closed == sum(m.f_at(n, counts) for n in range(lo, hi)), (lo, hi)
        assert all(isinstance(v, int) for v in m.f_values(lo, hi, counts))
    assert m.sum_closed(0, 0, counts) == 0 and m.sum_jump(7, 7, counts) == 0


def test_sum_multinomial_small():
    assert m.sum_multinomial(0, 40, ARTICLE) == m.sum_closed(0, 40, ARTICLE)
    assert m.sum_multinomial(10, 25, EXPLICIT) == m.sum_jump(10, 25, EXPLICIT)
    assert m.sum_multinomial(3, 3, ARTICLE) == 0


def test_results_are_plain_int():
    values = [
        m.f_at(50, ARTICLE), *m.f_state(50, ARTICLE), m.sum_jump(0, 50, ARTICLE),
        m.sum_closed(0, 50, ARTICLE), m.f_multinomial(20, ARTICLE), m.sum_multinomial(0, 5, ARTICLE),
    ]
    assert all(type(v) is int for v in values)


@settings(max_examples=60, deadline=None)
@given(
    lo=st.integers(0, 3000),
    span=st.integers(0, 3000),
    counts=st.tuples(*[st.integers(0, 10**7)] * 4),
)
def test_property_closed_equals_jump(lo, span, counts):
    hi = min(lo + span, 3000)
    lo = min(lo, hi)
    assert m.sum_closed(lo, hi, counts) == m.sum_jump(lo, hi, counts)


# ------------------------------------------------------------- backends

def _fingerprint_code():
    return (
        "from stepmap.workloads import s3keys_math as m;"
        "A = m.ALPHABETS['article'];"
        "print(m.BACKEND);"
        "print(m.sum_closed(0, 3000, A), m.sum_closed(1234, 2345, (5, 6, 7, 8)),"
        " m.sum_jump(100, 400, A), m.f_at(5000, A), *m.f_state(777, A),"
        " m.f_multinomial(90, A))"
    )


def _run(env_value):
    env = dict(os.environ, PYTHONPATH=SRC, PYTHONINTMAXSTRDIGITS="0")
    env.pop("STEPMAP_BIGINT", None)
    if env_value is not None:
        env["STEPMAP_BIGINT"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", _fingerprint_code()], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n", 1)
    return out[0], out[1]


def test_backends_identical_via_subprocess():
    backend_py, result_py = _run("python")
    assert backend_py == "python"
    backend_default, result_default = _run(None)
    assert backend_default in ("gmpy2", "python")
    assert result_py == result_default
    # And the in-process module (whatever its backend) agrees too.
    A = ARTICLE
    expected = " ".join(map(str, [
        m.sum_closed(0, 3000, A), m.sum_closed(1234, 2345, (5, 6, 7, 8)), m.sum_jump(100, 400, A),
        m.f_at(5000, A), *m.f_state(777, A), m.f_multinomial(90, A),
    ]))
    assert result_py.strip() == expected


def test_internal_arithmetic_int_vs_mpz():
    import gmpy2  # the fast extra: missing, fail rather than skip
    for counts in (ARTICLE, SCALAR, EXPLICIT):
        for e in (0, 1, 5, 1000, 4097):
            for rec in (m._rec_p(counts), m._rec_q(counts)):
                as_int = m._x_pow_mod(e, rec, int)
                as_mpz = m._x_pow_mod(e, rec, gmpy2.mpz)
                assert all(type(v) is int for v in as_int)
                assert [int(v) for v in as_mpz] == as_int
            assert m._state(e, counts, int) == tuple(int(v) for v in m._state(e, counts, gmpy2.mpz))
            assert m._prefix_sum(e, counts, int) == int(m._prefix_sum(e, counts, gmpy2.mpz))


# -------------------------------------------------------------- alphabets

def test_resolve_named():
    assert m.resolve_alphabet("article") == (ARTICLE, "article (128, 1863, 42451, 78341)")
    assert m.resolve_alphabet("scalar") == (SCALAR, "scalar (128, 1920, 61440, 1048576)")
    counts, desc = m.resolve_alphabet("assigned")
    assert counts == m.assigned_counts()[0]
    assert desc.startswith(f"assigned (Unicode {unicodedata.unidata_version}: ")


def test_resolve_explicit():
    assert m.resolve_alphabet("1,2,3,4")[0] == (1, 2, 3, 4)
    assert m.resolve_alphabet(" 1 , 2 ,3,  4 ")[0] == (1, 2, 3, 4)
    assert m.resolve_alphabet("0,0,0,10000000")[0] == (0, 0, 0, 10**7)
    assert "(1, 2, 3, 4)" in m.resolve_alphabet("1,2,3,4")[1]


@pytest.mark.parametrize(
    "spec", ["", "foo", "1,2,3", "1,2,3,-4", "a,b,c,d", "1,2,3,99999999999", "1,2,3,4,5", "1,2,3,10000001", "1,2,3,٤"]
)
def test_resolve_bad(spec):
    with pytest.raises(ValueError) as info:
        m.resolve_alphabet(spec)
    message = str(info.value)
    assert "\n" not in message and repr(spec) in message
    assert "article" in message and "c1,c2,c3,c4" in message


def test_assigned_counts():
    counts, version = m.assigned_counts()
    assert version == unicodedata.unidata_version
    assert counts[0] == 128
    assert all(isinstance(c, int) and 0 < c <= s for c, s in zip(counts, SCALAR))
    # Independent slow count via per-code-point category lookups.
    slow = [0, 0, 0, 0]
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)) not in ("Cn", "Cs"):
            slow[len(chr(cp).encode("utf-8")) - 1] += 1
    assert tuple(slow) == counts
    assert m.assigned_counts() is m.assigned_counts()  # cached


# ------------------------------------------------------------- validation

@pytest.mark.parametrize("bad", [-1, True, 1.0, "3", None])
def test_bad_index_rejected(bad):
    with pytest.raises(ValueError):
        m.f_at(bad, ARTICLE)
    with pytest.raises(ValueError):
        m.f_state(bad, ARTICLE)
    with pytest.raises(ValueError):
        m.f_multinomial(bad, ARTICLE)
    for fn in (m.sum_jump, m.sum_closed, m.f_values, m.sum_multinomial):
        with pytest.raises(ValueError):
            fn(bad, 5, ARTICLE)
        with pytest.raises(ValueError):
            fn(0, bad, ARTICLE)


@pytest.mark.parametrize("fn", [m.sum_jump, m.sum_closed, m.f_values, m.sum_multinomial])
def test_lo_greater_than_hi_rejected(fn):
    with pytest.raises(ValueError, match="lo <= hi"):
        fn(5, 4, ARTICLE)


@pytest.mark.parametrize("counts", [(1, 2, 3), (1, 2, 3, -4), (1, 2, 3, 4.0), (True, 0, 0, 0)])
def test_bad_counts_rejected(counts):
    with pytest.raises(ValueError):
        m.f_at(3, counts)
    with pytest.raises(ValueError):
        m.sum_closed(0, 3, counts)
