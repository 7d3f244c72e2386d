"""The fuzz tier's settings (hypothesis): every fuzz target is one property, run with a few
examples in the fast tier and a few hundred in the slow tier.

    @FAST
    @given(...)
    def test_TARGET_fuzz_fast(...): check(...)

    @pytest.mark.slow
    @SLOW
    @given(...)
    def test_TARGET_fuzz(...): check(...)

A failing example that hypothesis finds is fixed and kept as an ordinary regression test
(or an `@example(...)` on the property)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # CPU time varies on a shared 2-core machine
    "derandomize": True,  # the same examples on every run: CI does not flake
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    "database": None,  # nothing written into the repository
}
FAST = settings(max_examples=10, **_COMMON)
"""The fast tier: a few examples per target."""
SLOW = settings(max_examples=300, **_COMMON)
"""The slow tier (`-m slow`): a few hundred examples per target."""
