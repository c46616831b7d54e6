"""The canary's judgement on one window of calls (aimesh/canary.py): the rules, without a mesh."""
from __future__ import annotations

import math

from aimesh.canary import Limits, judge
from aimesh.live import Counts

LIMITS = Limits(bad_share=0.01, p99_s=0.25)
FAST = ((0.01, 99.0), (0.05, 100.0), (math.inf, 100.0))
SLOW = ((0.01, 50.0), (0.5, 95.0), (1.0, 100.0), (math.inf, 100.0))


def test_too_few_calls_wait_even_when_all_failed():
    assert judge(Counts(calls=9, errors=9), Counts(calls=100), LIMITS, min_calls=10, step_over=True).verdict == "wait"


def test_errors_over_the_budget_roll_back_before_the_step_ends():
    verdict = judge(Counts(calls=20, errors=10, buckets=FAST), Counts(calls=200, buckets=FAST), LIMITS,
                    min_calls=10, step_over=False)
    assert verdict.verdict == "rollback" and "10 errors" in verdict.reason


def test_fallbacks_count_against_the_version():
    verdict = judge(Counts(calls=100, fallbacks=30, buckets=FAST), Counts(calls=100, buckets=FAST), LIMITS,
                    min_calls=10, step_over=True)
    assert verdict.verdict == "rollback" and "30 fallbacks" in verdict.reason


def test_what_stable_suffers_too_is_not_the_canarys_fault():
    outage = judge(Counts(calls=100, errors=5, buckets=FAST), Counts(calls=900, errors=45, buckets=FAST),
                   LIMITS, min_calls=10, step_over=True)
    assert outage.verdict == "promote"


def test_a_healthy_window_waits_for_the_step_end_then_promotes():
    healthy = Counts(calls=100, buckets=FAST)
    assert judge(healthy, healthy, LIMITS, min_calls=10, step_over=False).verdict == "wait"
    assert judge(healthy, healthy, LIMITS, min_calls=10, step_over=True).verdict == "promote"


def test_p99_over_the_slo_and_far_over_stable_rolls_back_at_the_step_end():
    slow, fast = Counts(calls=100, buckets=SLOW), Counts(calls=100, buckets=FAST)
    assert judge(slow, fast, LIMITS, min_calls=10, step_over=False).verdict == "wait"
    verdict = judge(slow, fast, LIMITS, min_calls=10, step_over=True)
    assert verdict.verdict == "rollback" and "p99 1000 ms" in verdict.reason
    assert judge(slow, slow, LIMITS, min_calls=10, step_over=True).verdict == "promote"   # both slow


def test_a_window_is_the_difference_of_two_readings():
    earlier = Counts(calls=10, errors=1, fallbacks=2, buckets=((0.01, 10.0), (math.inf, 10.0)))
    later = Counts(calls=30, errors=2, fallbacks=2, buckets=((0.01, 25.0), (math.inf, 30.0)))
    window = later - earlier
    assert (window.calls, window.errors, window.fallbacks) == (20, 1, 0)
    assert window.buckets == ((0.01, 15.0), (math.inf, 20.0))
    assert window.quantile(0.5) == 0.01 and window.quantile(0.99) == math.inf
