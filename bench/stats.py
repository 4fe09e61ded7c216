"""Small statistics helpers shared by the measurements."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max (and the count) of latencies given in seconds, reported in ms."""
    ordered = sorted(values_s)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 3),
    }


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 UTC time such as ``2026-01-02T03:04:05.123456Z``."""
    return datetime.fromisoformat(text).timestamp()


def ratio(value: float, baseline: float) -> float | None:
    """``value / baseline`` rounded, or ``None`` when the baseline is zero."""
    return round(value / baseline, 3) if baseline else None
