"""The benchmarks' shared round-robin timer: call order, warm-up and what it returns (never timings)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives at the repository root

from bench.common import Timing, median_seconds, round_robin  # noqa: E402


def test_round_robin_calls_in_turns_after_untimed_warm_up_turns():
    calls = []
    timings = round_robin([lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")],
                          repeats=3, warmup=2)
    assert calls == ["a", "b", "c"] * 5
    assert len(timings) == 3 and all(isinstance(t, Timing) and t.seconds >= 0 and t.cpu_seconds >= 0
                                     for t in timings)


def test_median_seconds_is_one_function_timed_alone():
    calls = []
    assert median_seconds(lambda: calls.append(1), repeats=4, warmup=1) >= 0
    assert len(calls) == 5
