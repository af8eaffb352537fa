"""Counters and summaries shared by the engine, the benchmarks and the notebooks."""

import collections
import math
from collections.abc import Iterable


class Counters(collections.Counter):
    """Named monotonic counts (`counters["evicted_pages"] += n`); missing names read as 0."""

    def ratio(self, numerator: str, denominator: str) -> float:
        """``numerator / denominator``, 0.0 when the denominator is 0."""
        den = self[denominator]
        return self[numerator] / den if den else 0.0


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Count, mean and the 50/90/99th percentiles (nearest rank) of `values`; {} when empty."""
    data = sorted(values)
    if not data:
        return {}

    def rank(q: float) -> float:
        return data[max(0, math.ceil(q * len(data)) - 1)]

    return {
        "count": len(data),
        "mean": sum(data) / len(data),
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": data[-1],
    }
