"""The health gate's error-rate bound: sound for few errors, and wrong no more often than its confidence says."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.gates import EXACT_BOUND_MAX_ERRORS, error_rate_lower_bound


def test_the_bound_is_below_the_observed_rate_and_closes_in_on_it_as_requests_grow():
    assert error_rate_lower_bound(0, 0) == 0.0
    assert error_rate_lower_bound(0, 1000) == 0.0
    bounds = [error_rate_lower_bound(n // 50, n) for n in (50, 500, 5000, 50_000)]  # 2 % each time
    assert all(b < 0.02 for b in bounds) and bounds == sorted(bounds)
    assert bounds[-1] == pytest.approx(0.02, rel=0.06)
    assert error_rate_lower_bound(1, 42) < 0.02 < error_rate_lower_bound(10, 100)
    assert 0.0 <= error_rate_lower_bound(100, 100) <= 1.0


@pytest.mark.parametrize(("errors", "requests"), [(1, 42), (3, 30), (12, 400), (250, 10_000), (1500, 60_000)])
def test_at_the_bound_seeing_that_many_errors_or_more_has_probability_alpha(errors, requests):
    """The bound's definition, checked by simulation rather than by the formula it is computed with."""
    bound = error_rate_lower_bound(errors, requests)
    draws = np.random.default_rng(7).binomial(requests, bound, size=200_000)
    assert np.mean(draws >= errors) == pytest.approx(0.05, abs=0.004)


@pytest.mark.parametrize("requests", [30, 100, 400])
def test_a_version_exactly_at_the_limit_is_failed_in_at_most_5_percent_of_checks(requests):
    """The one-sided 95 % bound: a cohort whose true rate equals the limit looks significantly over it in
    at most 5 % of checks, however few the requests."""
    rng = np.random.default_rng(42)
    limit = 0.02
    errors = rng.binomial(requests, limit, size=20_000)
    wrongly_failed = np.mean([error_rate_lower_bound(int(e), requests) > limit for e in errors])
    assert wrongly_failed < 0.055  # 5 % and 20,000 draws' sampling error
    naive = np.mean(errors / requests > limit)
    assert naive > 0.2  # what the plain rate would have failed


def test_past_the_exact_range_the_approximation_joins_the_exact_bound_smoothly():
    at, past = EXACT_BOUND_MAX_ERRORS, EXACT_BOUND_MAX_ERRORS + 1
    exact, approximate = error_rate_lower_bound(at, 40 * at), error_rate_lower_bound(past, 40 * past)
    assert approximate == pytest.approx(exact, rel=0.01)
