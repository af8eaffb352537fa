"""The hold-time knapsack: hulls, budget allocation by slope, and the hold mixes it reports."""

import pytest

from pcjax.cache.hold_knapsack import allocate, holds, upper_hull


def test_upper_hull_drops_points_under_a_chord():
    # (2, 1) lies under the chord (0, 0) -> (4, 4); (4, 4) -> (6, 4) is flat but stays
    points = [(0, 0, 0), (2, 1, 5), (4, 4, 10), (6, 4, 20)]
    assert upper_hull(points) == [(0, 0, 0), (4, 4, 10), (6, 4, 20)]


def test_allocate_takes_the_steepest_segments_and_a_share_of_the_last():
    """Class "a": hold 10 costs 2 for 4 hits (slope 2), hold 20 costs 4 more for 2 (slope 1/2).
    Class "b": hold 5 costs 3 for 3 hits (slope 1). A budget of 6 takes a's first segment (2),
    b's (3), and 1/4 of a's second (1 of 4)."""
    curves = {"a": [(0, 0, 0), (2, 4, 10), (6, 6, 20)], "b": [(0, 0, 0), (3, 3, 5)]}
    steps = allocate(curves, budget=6)
    assert [(s.cls, s.share) for s in steps] == [("a", 1.0), ("b", 1.0), ("a", 0.25)]
    value = sum(s.share * (s.b[1] - s.a[1]) for s in steps)
    assert value == pytest.approx(4 + 3 + 0.5)
    assert holds(steps) == {"a": (10, 20, 0.25), "b": (0, 5, 1.0)}


def test_allocate_skips_segments_that_add_nothing_and_stops_when_the_budget_is_spent():
    curves = {"flat": [(0, 0, 0), (5, 0, 10)], "c": [(0, 0, 0), (10, 5, 7)]}
    steps = allocate(curves, budget=2)
    assert [(s.cls, s.share) for s in steps] == [("c", 0.2)]
    assert allocate(curves, budget=0) == []
