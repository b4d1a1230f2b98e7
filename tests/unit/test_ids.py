"""Ids: Crockford base32 as the ULID spec spells it, and ULIDs that sort in creation order."""
from __future__ import annotations

import re

from hypothesis import given, strategies as st

from jobbie.transport.ids import IdGenerator, _digits16, crockford32

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def digit_by_digit(n: int, length: int) -> str:
    """The definition: the low 5 bits of n are the last digit, and so on."""
    return "".join(ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(length)))


def test_known_values():
    # Given the ULID spec's example time / Then its spelling
    assert crockford32(1469918176385, 10) == "01ARYZ6S41"
    assert crockford32(0, 10) == "0000000000"
    assert crockford32(31, 2) == "0Z"
    assert crockford32(2**80 - 1, 16) == "Z" * 16


@given(st.integers(min_value=0, max_value=2**200), st.integers(min_value=1, max_value=40))
def test_matches_the_digit_by_digit_definition(n, length):
    # Given any value and length (also values wider than the digits: only the low bits count)
    assert crockford32(n, length) == digit_by_digit(n, length)


def test_ulids_have_the_documented_shape_and_sort_in_creation_order_within_one_millisecond():
    # Given a clock that stands still / Then later ids still sort after earlier ones
    gen = IdGenerator(clock=lambda: 1_700_000_000.123)
    ids = [gen.new("job") for _ in range(1000)]
    assert all(re.fullmatch(r"job_[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert ids[0][4:14] == crockford32(1_700_000_000_123, 10)


def test_ulids_sort_by_time_across_milliseconds():
    now = [1_700_000_000.0]
    gen = IdGenerator(clock=lambda: now[0])
    first = gen.ulid()
    now[0] += 0.001
    assert gen.ulid() > first


@given(st.integers(min_value=0, max_value=2**100))
def test_the_random_part_is_spelt_as_crockford32_spells_it(n):
    assert _digits16(n) == crockford32(n, 16) == digit_by_digit(n, 16)


def test_a_clock_that_steps_back_keeps_the_last_time_digits_and_counts_on():
    now = [1_700_000_000.5]
    gen = IdGenerator(clock=lambda: now[0])
    first = gen.ulid()
    now[0] -= 2.0  # NTP stepped the clock back
    second = gen.ulid()
    assert second > first and second[:10] == first[:10]
