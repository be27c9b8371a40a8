"""Labels: only future failures, down time and censored ends excluded."""

from __future__ import annotations

import numpy as np

from ml_pipeline.labels import EXCLUDED, NEGATIVE, POSITIVE, FailureEvent, label_rows

H = 3_600_000  # one hour, in ms
FAILURE = FailureEvent("M1", failed_at_ms=100 * H, repaired_at_ms=104 * H)


def labels_at(hours: list[float], *, end_hours: float = 1000, horizon_hours: float = 24):
    t = (np.array(hours) * H).astype(np.int64)
    return label_rows(
        ["M1"] * len(t), t, [FAILURE], int(end_hours * H), int(horizon_hours * H)
    ).tolist()


def test_only_a_failure_within_the_future_horizon_is_positive() -> None:
    assert labels_at([70, 75.9, 76, 80, 99.9]) == [NEGATIVE, NEGATIVE, POSITIVE, POSITIVE, POSITIVE]


def test_the_past_failure_and_its_repair_are_not_positive() -> None:
    # the seeds labelled rows near past maintenance positive: after the repair is negative
    assert labels_at([104, 110, 130]) == [NEGATIVE, NEGATIVE, NEGATIVE]


def test_down_time_between_failure_and_repair_is_excluded() -> None:
    assert labels_at([100, 101, 103.99]) == [EXCLUDED] * 3


def test_the_censored_end_is_excluded_unless_a_failure_is_seen() -> None:
    # data ends at 90 h: rows whose horizon passes the end know nothing of what followed
    assert labels_at([60, 66, 67, 80], end_hours=90) == [NEGATIVE, NEGATIVE, EXCLUDED, EXCLUDED]
    # a failure inside the data keeps the row positive even near the end
    assert labels_at([90], end_hours=101) == [POSITIVE]


def test_other_machines_failures_do_not_leak() -> None:
    t = np.array([90 * H], dtype=np.int64)
    assert label_rows(["M2"], t, [FAILURE], 1000 * H).tolist() == [NEGATIVE]
