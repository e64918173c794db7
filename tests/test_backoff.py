from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from occoord.backoff import Backoff


def test_doubles_from_the_base_up_to_the_cap() -> None:
    policy = Backoff(base=0.5, cap=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_zero_base_never_waits() -> None:
    assert Backoff(base=0.0, cap=10.0).delay(5) == 0.0


@given(st.integers(min_value=-5, max_value=10_000), st.floats(0.001, 100), st.floats(0.001, 1000))
def test_never_above_the_cap_and_never_negative(attempt: int, base: float, cap: float) -> None:
    delay = Backoff(base=base, cap=cap).delay(attempt)
    assert 0.0 <= delay <= max(cap, 0.0)
