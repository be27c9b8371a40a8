"""Evaluation figures for a failure model, written as one metrics JSON.

* ``pr_auc``: average precision over the labelled rows (positives are rare, ROC-AUC flatters);
* ``precision`` / ``recall`` at the alert threshold, per row;
* ``lead_time_hours``: per failure of the evaluated machines, how long before the failure the
  first alert of its horizon window fired (median, mean, share of failures caught at all);
* ``false_alarms_per_machine_day``: alert episodes (rising edges per machine) that no failure
  followed within the horizon, divided by the machine-days evaluated.

`alert_quality` judges the alerts people receive (any producer's RAISED anomalies) against
what happened: the share of alerts followed by a failure or an injected fault of the same
machine within the horizon, and the share of failures (and faults) that an alert preceded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iiot.anomaly import Anomaly
from ml_pipeline.labels import DEFAULT_HORIZON_MS, EXCLUDED, FailureEvent

DAY_MS = 24 * 3_600_000


def pr_auc(label: npt.NDArray[np.int8], prob: npt.NDArray[np.float64]) -> float:
    """Average precision (the step-wise area under the precision-recall curve)."""
    positives = int((label == 1).sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-prob, kind="stable")
    hits = (label[order] == 1).astype(np.float64)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    # ties share one threshold: evaluate at the last row of each tied group
    last_of_group = np.append(prob[order][1:] != prob[order][:-1], True)
    recall_gain = np.diff(np.concatenate([[0.0], tp[last_of_group]])) / positives
    return float((precision[last_of_group] * recall_gain).sum())


def classification_at(
    label: npt.NDArray[np.int8], prob: npt.NDArray[np.float64], threshold: float
) -> dict[str, float]:
    predicted = prob >= threshold
    tp = int((predicted & (label == 1)).sum())
    fp = int((predicted & (label == 0)).sum())
    fn = int((~predicted & (label == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def evaluate(
    prob: npt.NDArray[np.float64],
    label: npt.NDArray[np.int8],
    machine_id: npt.NDArray[np.str_],
    timestamp: npt.NDArray[np.int64],
    failures: Sequence[FailureEvent],
    *,
    threshold: float = 0.8,
    horizon_ms: int = DEFAULT_HORIZON_MS,
) -> dict[str, Any]:
    """All the figures of the module docstring for one set of scored rows."""
    labelled = label != EXCLUDED
    metrics: dict[str, Any] = {
        "rows": int(labelled.sum()),
        "positive_rows": int((label == 1).sum()),
        "threshold": threshold,
        "horizon_hours": horizon_ms / 3_600_000,
        "pr_auc": pr_auc(label[labelled], prob[labelled]),
    }
    metrics.update(classification_at(label[labelled], prob[labelled], threshold))

    leads: list[float] = []
    missed = 0
    false_alarms = 0
    machine_days = 0.0
    by_machine: dict[str, list[FailureEvent]] = {}
    for failure in failures:
        by_machine.setdefault(failure.machine_id, []).append(failure)
    for machine in np.unique(machine_id):
        rows = np.flatnonzero(machine_id == machine)
        rows = rows[np.argsort(timestamp[rows], kind="stable")]
        t, p, lab = timestamp[rows], prob[rows], label[rows]
        machine_days += (t[-1] - t[0]) / DAY_MS if len(t) > 1 else 0.0
        alert = (p >= threshold) & (lab != EXCLUDED)
        rising = alert & ~np.concatenate([[False], alert[:-1]])
        false_alarms += int((rising & (lab == 0)).sum())
        for failure in by_machine.get(str(machine), []):
            if failure.failed_at_ms <= t[0] or failure.failed_at_ms - horizon_ms < t[0]:
                continue  # the failure's whole warning window is not in the evaluated span
            if failure.failed_at_ms > t[-1] + horizon_ms:
                continue
            window = (t > failure.failed_at_ms - horizon_ms) & (t < failure.failed_at_ms)
            fired = np.flatnonzero(window & alert)
            if len(fired):
                leads.append((failure.failed_at_ms - int(t[fired[0]])) / 3_600_000)
            else:
                missed += 1
    caught = len(leads)
    metrics["failures_evaluated"] = caught + missed
    metrics["failures_caught"] = caught
    metrics["lead_time_hours"] = {
        "median": float(np.median(leads)) if leads else None,
        "mean": float(np.mean(leads)) if leads else None,
        "min": float(np.min(leads)) if leads else None,
    }
    metrics["machine_days"] = round(machine_days, 3)
    metrics["false_alarms"] = false_alarms
    metrics["false_alarms_per_machine_day"] = false_alarms / machine_days if machine_days else None
    return metrics


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------- alert quality


@dataclass(frozen=True)
class Incident:
    """Something an alert should have announced: a failure (from its moment to its repair) or a
    fault injected on purpose (from its start to its end)."""

    machine_id: str
    start_ms: int
    end_ms: int
    kind: str = "failure"  # "failure" or "injected_fault"


def failure_incidents(failures: Iterable[FailureEvent]) -> list[Incident]:
    return [Incident(f.machine_id, f.failed_at_ms, f.repaired_at_ms) for f in failures]


def alert_quality(
    alerts: Iterable[Anomaly],
    incidents: Sequence[Incident],
    *,
    horizon_ms: int = DEFAULT_HORIZON_MS,
    since_ms: int | None = None,
) -> dict[str, Any]:
    """How much the alerts were worth, for the RAISED ones among `alerts`:

    * ``alert_precision``: alerts that an incident of the same machine followed within the
      horizon (one starting in ``(t, t + horizon]``, or under way at ``t``), over all alerts;
    * ``failures_alerted``: failures that an alert of the same machine preceded within the
      horizon (in ``[start - horizon, start)``), over all failures; the same for injected
      faults (an alert up to the fault's end counts: the fault is there to be found);
    * the same per anomaly type, so each producer is judged on its own alerts.

    With `since_ms` (when the alerting began), an incident that started before it is left out
    of the recall (no alert of the data could have announced it) and counted apart; an alert
    while it is still under way still counts as followed by it.
    """
    by_machine: dict[str, list[tuple[int, Incident]]] = {}
    for number, incident in enumerate(incidents):
        by_machine.setdefault(incident.machine_id, []).append((number, incident))
    raised = sorted(
        (a for a in alerts if a.state == "RAISED"), key=lambda a: (a.timestamp, a.machine_id)
    )
    per_type: dict[str, list[int]] = {}
    announced: set[int] = set()
    true_alerts = 0
    for alert in raised:
        t = alert.timestamp
        useful = False
        for number, incident in by_machine.get(alert.machine_id, []):
            ahead = t < incident.start_ms <= t + horizon_ms
            under_way = incident.start_ms <= t <= incident.end_ms
            if ahead or under_way:
                useful = True
            ends = incident.end_ms if incident.kind != "failure" else incident.start_ms - 1
            if incident.start_ms - horizon_ms <= t <= ends:
                announced.add(number)
        true_alerts += useful
        counts = per_type.setdefault(alert.anomaly_type, [0, 0])
        counts[0] += 1
        counts[1] += useful

    def share(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    def announceable(incident: Incident) -> bool:
        return since_ms is None or incident.start_ms >= since_ms

    failures = [n for n, i in enumerate(incidents) if i.kind == "failure" and announceable(i)]
    faults = [n for n, i in enumerate(incidents) if i.kind != "failure" and announceable(i)]
    before = [i for i in incidents if not announceable(i)]
    failures_alerted = sum(n in announced for n in failures)
    faults_alerted = sum(n in announced for n in faults)
    return {
        "horizon_hours": horizon_ms / 3_600_000,
        "alerts": len(raised),
        "alerts_followed_by_an_incident": true_alerts,
        "alert_precision": share(true_alerts, len(raised)),
        "failures": len(failures),
        "failures_alerted": failures_alerted,
        "failure_recall": share(failures_alerted, len(failures)),
        "injected_faults": len(faults),
        "injected_faults_alerted": faults_alerted,
        "incidents_before_the_data": len(before),
        "by_type": {
            kind: {"alerts": n, "followed": hit, "precision": share(hit, n)}
            for kind, (n, hit) in sorted(per_type.items())
        },
    }
