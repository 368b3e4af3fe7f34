"""Percentiles the way the tables report them: nearest rank on sorted samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank p-th percentile (0 < p <= 100) of ascending `sorted_values`: the
    smallest value with at least p% of the samples at or below it. NaN when empty."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is not in (0, 100]")
    if not sorted_values:
        return math.nan
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[rank - 1]


def median(values: Sequence[float]) -> float:
    """The middle value (mean of the two middle ones for an even count). NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
