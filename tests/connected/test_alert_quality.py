"""A connected run's alert quality in both definitions: the notifications people received (the
headline) and every RAISED anomaly at the router (`raw_anomalies`), from the run's own records
(the anomaly stream's ledger and the router's log), against the fleet's failures."""

from __future__ import annotations

import json
from pathlib import Path

from iiot.anomaly import Anomaly, encode_anomaly
from local_platform.cli import _alert_quality_line
from local_platform.connected import maintenance
from local_platform.connected.alert_quality import judge_run
from local_platform.connected.plan import Plan


def _write_run(plan: Plan, routed: list[tuple[Anomaly, str, str | None]]) -> None:
    plan.cloud_dir.mkdir(parents=True)
    (plan.run_dir / "logs").mkdir()
    with (plan.cloud_dir / "anomaly-stream-records.jsonl").open("w") as ledger:
        for anomaly, _, _ in routed:
            ledger.write(json.dumps({"data": encode_anomaly(anomaly).decode()}) + "\n")
    with (plan.run_dir / "logs" / "lambda-alert_router.log").open("w") as log:
        for anomaly, decision, reason in routed:
            entry = {
                "message": "anomaly routed",
                "decision": decision,
                "duplicate": False,
                "anomaly_id": anomaly.anomaly_id,
            }
            log.write(json.dumps(entry | ({"reason": reason} if reason else {})) + "\n")
            # a redelivery is recognised as a duplicate and decides nothing again
            log.write(json.dumps(entry | {"duplicate": True, "decision": "sent"}) + "\n")


def test_notifications_and_raw_anomalies_are_judged_apart(tmp_path: Path) -> None:
    plan = Plan(work_dir=tmp_path)
    _, failures, _ = maintenance.schedule(plan)
    failure = next(
        f for f in failures if plan.live_start_ms <= int(f["failed_at_ms"]) < plan.live_end_ms
    )
    failing = {f["machine_id"] for f in failures}
    healthy = next(
        f"{factory}-M{n:03d}"
        for factory in plan.factory_ids
        for n in range(1, plan.machines_per_factory + 1)
        if f"{factory}-M{n:03d}" not in failing
    )

    def anomaly(machine: str, kind: str, metric: str, at_ms: int) -> Anomaly:
        return Anomaly(
            factory_id=machine.split("-")[0],
            machine_id=machine,
            metric=metric,
            anomaly_type=kind,
            severity="WARNING",
            value=1.0,
            threshold=0.5,
            timestamp=at_ms,
            source="stream" if kind == "RAPID_CHANGE" else "model",
        )

    before_failure = int(failure["failed_at_ms"]) - 60_000
    start_up = plan.live_start_ms + 3_600_000
    _write_run(
        plan,
        [
            (anomaly(failure["machine_id"], "RAPID_CHANGE", "rpm", before_failure), "sent", None),
            (
                anomaly(failure["machine_id"], "RAPID_CHANGE", "rpm", before_failure + 10_000),
                "suppressed",
                "repeat within the cooldown",
            ),
            (
                anomaly(healthy, "RAPID_CHANGE", "flow_rate", start_up),
                "suppressed",
                "start-up after maintenance",
            ),
            (anomaly(healthy, "FAILURE_PREDICTED", "failure", start_up), "escalated", None),
        ],
    )
    quality = judge_run(plan)
    assert quality["definition"].startswith("notifications")
    assert (quality["alerts"], quality["alerts_followed_by_an_incident"]) == (2, 1)
    assert quality["alert_precision"] == 0.5
    assert quality["by_type"]["RAPID_CHANGE"] == {"alerts": 1, "followed": 1, "precision": 1.0}
    raw = quality["raw_anomalies"]
    assert (raw["alerts"], raw["alerts_followed_by_an_incident"]) == (4, 2)
    assert raw["by_type"]["RAPID_CHANGE"] == {"alerts": 3, "followed": 2, "precision": 0.6667}
    assert (quality["failures_alerted"], raw["failures_alerted"]) == (1, 1)
    assert quality["suppressed"] == {
        "repeat within the cooldown: RAPID_CHANGE": 1,
        "start-up after maintenance: RAPID_CHANGE": 1,
    }
    assert quality["not_routed"] == 0
    printed = _alert_quality_line(quality)
    assert printed.startswith("alert precision 0.50 (1 of 2 notifications followed")
    assert "raw anomaly precision 0.50 (2 of 4 RAISED anomalies at the router" in printed
    assert "start-up after maintenance: RAPID_CHANGE 1" in printed
