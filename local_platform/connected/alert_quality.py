"""How much a connected run's alerts were worth, in two definitions of "an alert".

* **Notifications** (the headline `alert_precision`): what the alert router sent to people (its
  decisions `sent` and `escalated`, one per anomaly id, from the function's log). This is what
  alarm management calls an alarm (ISA-18.2, EEMUA 191: what is annunciated to an operator),
  and what an operator's trust depends on. A repeat the router's cooldown held back or a
  start-up transient it shelved after maintenance reached nobody, so it is no alert here.
* **Raw anomalies** (`raw_anomalies`): every RAISED anomaly that reached the router (each id
  once; the predictors' and the stream rules', live and late), whatever the router did with it.
  One rapid change counts once per window and metric (3-6 times), and shelved start-up
  transients count as false alarms: the detectors' own precision, reported beside the
  headline so that the router's suppression can never hide a noisy detector.

Both are judged by `ml_pipeline.evaluate.alert_quality` against the fleet's failures: an alert
is right when a failure of its machine followed within the horizon (or was under way), and a
failure of the live hours is alerted when an alert of its machine preceded it within the
horizon. `suppressed` counts the router's suppressions per reason and anomaly type. Written to
`reconciliation.json` (`alert_quality`) and `ml/alert_quality.json`, which the fleet report
shows; `iiot demo` prints both precisions.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from local_platform.connected.plan import Plan

HORIZON_MS = 24 * 3_600_000
NOTIFIED = ("sent", "escalated")


def router_decisions(plan: Plan) -> dict[str, dict[str, Any]]:
    """anomaly id -> the alert router's first routing of it (decision, reason), from the
    function's log (a redelivery is recognised as a duplicate and decides nothing again)."""
    from local_platform.connected.reconcile import function_log

    decisions: dict[str, dict[str, Any]] = {}
    log = plan.run_dir / "logs" / "lambda-alert_router.log"
    for entry in function_log(log, "anomaly routed"):
        if entry.get("duplicate"):
            continue
        decisions.setdefault(str(entry.get("anomaly_id")), entry)
    return decisions


def judge_run(plan: Plan, horizon_ms: int = HORIZON_MS) -> dict[str, Any]:
    """Both precisions, failures alerted by each, and the router's suppressions."""
    from local_platform.connected import maintenance
    from local_platform.connected.reconcile import _anomaly_ledger
    from ml_pipeline.evaluate import Incident
    from ml_pipeline.evaluate import alert_quality as judge

    _, failures, _ = maintenance.schedule(plan)
    incidents = [
        Incident(str(f["machine_id"]), int(f["failed_at_ms"]), int(f["repaired_at_ms"]))
        for f in failures
        if int(f["failed_at_ms"]) < plan.live_end_ms
    ]
    raised = [
        a
        for a in _anomaly_ledger(plan).values()
        if a.timestamp >= plan.live_start_ms and a.state == "RAISED"
    ]
    decisions = router_decisions(plan)
    notified = [a for a in raised if decisions.get(a.anomaly_id, {}).get("decision") in NOTIFIED]

    def judged(alerts: list[Any]) -> dict[str, Any]:
        return judge(alerts, incidents, horizon_ms=horizon_ms, since_ms=plan.live_start_ms)

    quality = judged(notified)
    quality["definition"] = (
        "notifications: anomalies the alert router sent to people (sent or escalated), each once"
    )
    by_source: dict[str, dict[str, Any]] = {}
    for source in sorted({a.source for a in notified}):
        part = judged([a for a in notified if a.source == source])
        by_source[source] = {
            k: part[k] for k in ("alerts", "alert_precision", "failures_alerted", "failures")
        }
    quality["by_source"] = by_source
    raw = judged(raised)
    quality["raw_anomalies"] = {
        "definition": "every RAISED anomaly that reached the alert router, each id once, "
        "whatever the router decided",
        **{
            k: raw[k]
            for k in (
                "alerts",
                "alerts_followed_by_an_incident",
                "alert_precision",
                "failures",
                "failures_alerted",
                "by_type",
            )
        },
    }
    suppressed: Counter[str] = Counter()
    for anomaly in raised:
        routing = decisions.get(anomaly.anomaly_id, {})
        if routing.get("decision") == "suppressed":
            reason = str(routing.get("reason") or "repeat within the cooldown")
            suppressed[f"{reason}: {anomaly.anomaly_type}"] += 1
    quality["suppressed"] = dict(sorted(suppressed.items()))
    quality["not_routed"] = sum(1 for a in raised if a.anomaly_id not in decisions)
    return quality


def alert_quality(plan: Plan, result: Any, horizon_ms: int = HORIZON_MS) -> None:
    """`judge_run` into the reconciliation's figures and `ml/alert_quality.json`."""
    quality = judge_run(plan, horizon_ms)
    result.figures["alert_quality"] = quality
    path = plan.work_dir / "ml" / "alert_quality.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(quality, indent=2) + "\n")
