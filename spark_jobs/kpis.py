"""Reliability KPIs: the one arithmetic of availability, MTBF and MTTR, and the split of a stop
into the days it covers. Plain Python (no Spark): the lake's maintenance job runs it inside
`mapInArrow` (spark_jobs/maintenance.py) and the fleet report calls it directly
(local_platform/report/run_data.py), so a machine-day in gold and a machine in the report are
computed the same way.

* availability = 1 - downtime / observed hours (planned and unplanned stops both count);
* MTBF = operating hours (observed - downtime) / failures, none without a failure;
* MTTR = repair hours / repairs (corrective jobs, each counted whole), none without a repair.
"""

from __future__ import annotations

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def availability(observed_h: float, downtime_h: float) -> float | None:
    """Share of the observed hours the machine was not stopped; None if nothing was observed."""
    return 1.0 - downtime_h / observed_h if observed_h > 0 else None


def mtbf_h(observed_h: float, downtime_h: float, failures: int) -> float | None:
    """Mean operating hours between failures; None without a failure."""
    return (observed_h - downtime_h) / failures if failures else None


def mttr_h(repair_h: float, repairs: int) -> float | None:
    """Mean hours of a repair; None without a repair."""
    return repair_h / repairs if repairs else None


def hours_by_day(
    begin_ms: int, end_ms: int, window_start_ms: int, window_end_ms: int
) -> list[tuple[int, float]]:
    """(UTC day start in ms, hours) of the part of [begin, end) inside the window, per day."""
    begin, end = max(begin_ms, window_start_ms), min(end_ms, window_end_ms)
    days = []
    day = begin - begin % DAY_MS
    while begin < end:
        stop = min(end, day + DAY_MS)
        days.append((day, (stop - begin) / HOUR_MS))
        begin, day = stop, day + DAY_MS
    return days
