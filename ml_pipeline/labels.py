"""Training labels: "this machine fails within the horizon H", from failure records only.

For a row of machine m at time t:

* positive (1) when a failure of m happens in ``(t, t + H]``: only *future* failures count
  (the seeds labelled *past* maintenance as positive, which teaches the model the repair);
* excluded (-1) while the machine is down after a failure, ``[failed_at, repaired_at)``: its
  sensors read a stopped pump, and "will it fail" has no meaning then;
* excluded (-1) when ``t + H`` is past the end of the observed data and no failure is seen
  before that end: the future is censored, the row could be either (failures after the end
  are ignored, as a training cut must not know them);
* negative (0) otherwise. Maintenance that averted a failure leaves its rows negative: nothing
  failed, which is what the records say.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HOUR_MS = 3_600_000
DEFAULT_HORIZON_MS = 24 * HOUR_MS
POSITIVE, NEGATIVE, EXCLUDED = 1, 0, -1


@dataclass(frozen=True)
class FailureEvent:
    machine_id: str
    failed_at_ms: int
    repaired_at_ms: int


def failure_events(records: Iterable[dict[str, str]]) -> list[FailureEvent]:
    """FailureEvents from failures.csv rows (machine_id, failed_at_ms, repaired_at_ms)."""
    return [
        FailureEvent(r["machine_id"], int(r["failed_at_ms"]), int(r["repaired_at_ms"]))
        for r in records
    ]


def label_rows(
    machine_ids: Sequence[str] | npt.NDArray[np.str_],
    timestamps: npt.NDArray[np.int64],
    failures: Sequence[FailureEvent],
    data_end_ms: int,
    horizon_ms: int = DEFAULT_HORIZON_MS,
) -> npt.NDArray[np.int8]:
    """1 / 0 / -1 (excluded) per row, as described in the module docstring."""
    machine_ids = np.asarray(machine_ids)
    timestamps = np.asarray(timestamps, dtype=np.int64)
    labels = np.full(len(timestamps), NEGATIVE, dtype=np.int8)
    by_machine: dict[str, list[FailureEvent]] = {}
    for failure in failures:
        if failure.failed_at_ms > data_end_ms:
            continue  # not observed yet: the data ends before it
        by_machine.setdefault(failure.machine_id, []).append(failure)
    for machine in np.unique(machine_ids):
        rows = np.flatnonzero(machine_ids == machine)
        t = timestamps[rows]
        events = sorted(by_machine.get(str(machine), []), key=lambda f: f.failed_at_ms)
        failed = np.array([f.failed_at_ms for f in events], dtype=np.int64)
        repaired = np.array([f.repaired_at_ms for f in events], dtype=np.int64)
        label = np.full(len(t), NEGATIVE, dtype=np.int8)
        if len(failed):
            # the next failure strictly after t
            nxt = np.searchsorted(failed, t, side="right")
            has_next = nxt < len(failed)
            gap = np.where(has_next, failed[np.minimum(nxt, len(failed) - 1)] - t, np.inf)
            label[gap <= horizon_ms] = POSITIVE
            # down time: the latest failure at or before t is not yet repaired
            prev = nxt - 1
            down = (prev >= 0) & (t < repaired[np.maximum(prev, 0)])
            label[down] = EXCLUDED
        censored = (label == NEGATIVE) & (t + horizon_ms > data_end_ms)
        label[censored] = EXCLUDED
        labels[rows] = label
    return labels
