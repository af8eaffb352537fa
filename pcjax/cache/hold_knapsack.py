"""Hold times per class as a fractional knapsack: the shared core of the class bound
(`pcjax.sim.headroom`) and of the ``learned_hold`` policy (`pcjax.cache.learned_hold`).

Each class offers a curve of points ``(cost, value, ..., T)``: holding every entry of the class
for ``T`` costs ``cost`` (cache room, e.g. block-requests) and is worth ``value`` (hits). Mixing
two hold times of a class reaches any point on the segment between them, so a class is worth its
upper concave hull, and the best use of a budget takes hull segments of all classes by falling
slope (value per cost) until the budget is spent: the last one taken partly, as a share of the
class's entries held to the longer time.

Host-only: plain Python.
"""

from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple


class Step(NamedTuple):
    """One hull segment taken: ``share`` of class ``cls``'s entries moved from hold point ``a``
    to hold point ``b`` (points are the caller's tuples, ``(cost, value, ..., T)``)."""

    cls: Hashable
    a: tuple
    b: tuple
    share: float


def upper_hull(points: Iterable[tuple]) -> list[tuple]:
    """The upper concave hull of ``points`` ordered by cost, the first being ``(0, 0, ...)``."""
    hull: list[tuple] = []
    for p in points:
        while len(hull) >= 2 and _not_above(hull[-2], hull[-1], p):
            hull.pop()
        hull.append(p)
    return hull


def _not_above(a: tuple, b: tuple, p: tuple) -> bool:
    """Whether ``b`` lies on or below the chord from ``a`` to ``p`` (so it leaves the hull)."""
    return (b[1] - a[1]) * (p[0] - a[0]) <= (p[1] - a[1]) * (b[0] - a[0])


def allocate(curves: dict[Hashable, Sequence[tuple]], budget: float) -> list[Step]:
    """The hull segments the best use of ``budget`` takes, in the order it takes them.

    Args:
      curves: per class, its hold points ordered by cost, starting at ``(0, 0, ..., 0)``.
      budget: the cost that may be spent in all.
    """
    segments = []
    for cls, points in curves.items():
        hull = upper_hull(points)
        for a, b in zip(hull, hull[1:], strict=False):
            if b[0] > a[0] and b[1] > a[1]:
                segments.append(((b[1] - a[1]) / (b[0] - a[0]), cls, a, b))
    segments.sort(key=lambda s: -s[0])
    steps = []
    for _, cls, a, b in segments:
        if budget <= 0:
            break
        share = min(1.0, budget / (b[0] - a[0]))
        budget -= share * (b[0] - a[0])
        steps.append(Step(cls, a, b, share))
    return steps


HoldMix = tuple[float, float, float]  # (T_low, T_high, share_high)


def holds(steps: Iterable[Step], time_index: int = -1) -> dict[Hashable, HoldMix]:
    """Per class, the hold mix of the taken ``steps``: ``(T_low, T_high, share_high)``, the hold
    times read at ``time_index`` of the points. Classes without a step are not held."""
    out = {}
    for step in steps:  # a class's later steps extend its earlier ones
        out[step.cls] = (step.a[time_index], step.b[time_index], step.share)
    return out
