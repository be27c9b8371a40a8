"""The demo's stream step: the Flink SQL rules over the simulated run on local PyFlink, then
every anomaly through the alert router's logic (in-memory cooldown store and notifiers)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from iiot.anomaly import Anomaly, decode_anomaly
from kda_sql.flink_env import ensure_flink_env, run_rules
from lambdas.alert_router.models import Decision
from lambdas.alert_router.repository import InMemoryCooldownStore, RecordingNotifier
from lambdas.alert_router.service import AlertService
from local_platform.demo import DemoContext

COOLDOWN_SECONDS = 900


def route_alerts(
    anomalies: list[Anomaly], units: dict[str, str], cooldown_seconds: int = COOLDOWN_SECONDS
) -> tuple[Counter[str], RecordingNotifier, RecordingNotifier]:
    """Route anomalies in event-time order; return decisions and what people would receive."""
    alerts, escalation = RecordingNotifier(), RecordingNotifier()
    service = AlertService(
        cooldown_store=InMemoryCooldownStore(),
        alerts=alerts,
        escalation=escalation,
        cooldown_seconds=cooldown_seconds,
        units=units,
    )
    decisions: Counter[str] = Counter()
    for anomaly in sorted(anomalies, key=lambda a: (a.timestamp, a.machine_id, a.metric)):
        decisions[service.route(anomaly).value] += 1
    return decisions, alerts, escalation


def stream_step(context: DemoContext) -> dict[str, Any]:
    source = context.simulation_dir / "readings.jsonl"
    out_dir = context.work_dir / "stream"
    # one bar, three stages: PyFlink environment, Flink SQL rules, alert router
    context.progress("stream rules (PyFlink) and alerts", 0, 3)
    ensure_flink_env()
    context.progress("stream rules (PyFlink) and alerts", 1, 3)
    run = run_rules(source, out_dir / "anomalies")
    anomalies = [decode_anomaly(line) for line in run.output_lines]
    context.progress("stream rules (PyFlink) and alerts", 2, 3)
    decisions, alerts, escalation = route_alerts(anomalies, dict(context.catalog.units))
    _write_alerts(out_dir / "alerts.txt", alerts)
    context.progress("stream rules (PyFlink) and alerts", 3, 3)
    events = _count_lines(source)
    by_rule = Counter(
        f"{a.anomaly_type} {a.severity}" if a.anomaly_type != "RAPID_CHANGE" else a.anomaly_type
        for a in anomalies
    )
    return {
        "events": events,
        "Flink job seconds (incl. JVM start)": round(run.seconds, 1),
        "events/s through the job": round(events / run.seconds) if run.seconds else 0,
        "anomalies": len(anomalies),
        "anomalies by rule": dict(sorted(by_rule.items())),
        "alerts sent": decisions[Decision.SENT.value] + decisions[Decision.ESCALATED.value],
        "escalated (CRITICAL)": len(escalation.sent),
        "suppressed (cooldown 15 min)": decisions[Decision.SUPPRESSED.value],
        "first alert": alerts.sent[0].subject if alerts.sent else "-",
        "alerts file": str(out_dir / "alerts.txt"),
    }


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def _write_alerts(path: Path, notifier: RecordingNotifier) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for note in notifier.sent:
            handle.write(f"Subject: {note.subject}\n{note.body}\n\n")
