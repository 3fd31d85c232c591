"""The shared HTTP helpers: one backoff for every client."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.http import backoff_delay


@given(attempt=st.integers(1, 500), seed=st.integers(0, 2**32), jitter=st.floats(0.0, 1.0))
def test_backoff_doubles_up_to_the_cap_and_jitters_only_the_jitter_fraction(
    attempt: int, seed: int, jitter: float
) -> None:
    ceiling = min(3600.0, 10.0 * 2.0 ** min(attempt - 1, 60))
    delay = backoff_delay(attempt, base=10.0, cap=3600.0, jitter=jitter, rng=random.Random(seed))
    assert ceiling * (1.0 - jitter) - 1e-9 <= delay <= ceiling + 1e-9


def test_full_jitter_draws_the_same_numbers_as_uniform_up_to_the_ceiling() -> None:
    drawn = [backoff_delay(n, base=0.5, cap=8.0, rng=random.Random(7)) for n in (1, 2, 3, 6)]
    assert drawn == [random.Random(7).uniform(0.0, c) for c in (0.5, 1.0, 2.0, 8.0)]


def test_without_jitter_the_delay_is_the_ceiling_and_needs_no_rng() -> None:
    delays = [backoff_delay(n, base=60.0, cap=3600.0, jitter=0.0) for n in range(1, 9)]
    assert delays == [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]


def test_a_jittered_backoff_without_an_rng_is_refused() -> None:
    with pytest.raises(ValueError, match="needs an rng"):
        backoff_delay(1, base=1.0, cap=2.0)
