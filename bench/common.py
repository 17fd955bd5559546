"""What the bench scripts share: the one percentile rule their tables report."""

from __future__ import annotations

import statistics


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (1 to 99) by linear interpolation between the closest ranks
    (`statistics.quantiles(method="inclusive")`, numpy's default rule)."""
    if not 1 <= q <= 99:
        raise ValueError(f"percentile must be between 1 and 99, got {q}")
    if len(values) < 2:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
