"""The reconciliation of a connected run: every reading accounted for, at every seam.

The sensors' messages are regenerated from the seed and validated against the contract, which
says independently of the platform what must come out: how many readings are valid (and so
must be in silver exactly once) and how many must be quarantined, for which reason. Each part
is then counted where it keeps its own record:

* sensors: what each factory's sensor process says it published;
* gateways: the SensorBuffer's SQLite database (its durable counters and quarantine table),
  read after it stopped;
* IoT rules and the delivery stream: their status files; the landing zone: its objects, walked
  batch by batch;
* the lake: silver readings of the live span (rows and distinct sensor-time keys) and
  silver.quarantine by reason, read with delta-rs.

Each check compares two counts and is written with both numbers; the run fails when any check
fails. `RECONCILIATION_FILE` in the run directory holds the result (schema in
local_platform/README.md).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iiot.catalog import load_catalog
from iiot.contract import Validator
from iiot.wire import validate_payload
from local_platform.connected import lake
from local_platform.connected.plan import Plan, read_json, write_json
from local_platform.connected.sensors import factory_messages

RECONCILIATION_FILE = "reconciliation.json"
# The FailurePredictor's topic (factory/<id>/predictions), which the SensorBuffer stores as the
# derived series failure_probability: its rows are counted apart from the sensors' readings.
PREDICTIONS_TOPIC_SUFFIX = "/predictions"


def reason_field(reason: str) -> str:
    """ "value: 130 is outside ..." -> "value" (the lake's `reason_field`, same rule)."""
    return reason.split(":", 1)[0].strip()


def expected_from_sensors(plan: Plan) -> dict[str, Any]:
    """What the contract says about the sensors' messages, per factory."""
    validator = Validator(load_catalog())
    result: dict[str, Any] = {}
    for factory in plan.factory_ids:
        published = valid = 0
        reasons: Counter[str] = Counter()
        malformed: Counter[str] = Counter()
        for message in factory_messages(plan, factory):
            published += message.readings
            if message.kind:
                malformed[message.kind] += 1
            outcome = validate_payload(message.payload, validator)
            valid += outcome.accepted
            for reject in outcome.rejects:
                reasons[reason_field(reject.reason)] += 1
        result[factory] = {
            "published": published,
            "valid": valid,
            "quarantined": sum(reasons.values()),
            "quarantined_by_reason": dict(sorted(reasons.items())),
            "malformed_payloads": dict(sorted(malformed.items())),
        }
    return result


def gateway_counts(database: Path) -> dict[str, Any]:
    """The SensorBuffer's own record: durable counters and quarantine reasons."""
    if not database.exists():
        return {"missing": str(database)}
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        reasons: Counter[str] = Counter()
        predictions_quarantined = 0
        for reason, topic in db.execute("SELECT reason, topic FROM quarantine"):
            if str(topic).endswith(PREDICTIONS_TOPIC_SUFFIX):
                predictions_quarantined += 1
            else:
                reasons[reason_field(reason)] += 1
        backlog = db.execute("SELECT COALESCE(SUM(count), 0) FROM blocks").fetchone()[0]
        outbox = db.execute("SELECT COUNT(*) FROM outbox WHERE acked = 0").fetchone()[0]
    finally:
        db.close()
    counters = {
        key.removeprefix("counter."): int(value)
        for key, value in meta.items()
        if key.startswith("counter.")
    }
    return {
        **counters,
        "quarantine_rows_by_reason": dict(sorted(reasons.items())),
        # quarantine rows from the predictions topic: predictions that were none (also the
        # counter predictions_quarantined) and converted readings the contract refused
        "prediction_quarantine_rows": predictions_quarantined,
        "unsent_readings": int(backlog),
        "unacked_batches": int(outbox),
    }


@dataclass
class Reconciliation:
    checks: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, left: Any, right: Any, *, note: str = "") -> bool:
        ok = bool(left == right)
        entry: dict[str, Any] = {"check": name, "left": left, "right": right, "ok": ok}
        if note:
            entry["note"] = note
        self.checks.append(entry)
        return ok

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": [c["check"] for c in self.checks if not c["ok"]],
            "checks": self.checks,
            **self.figures,
        }


def _sum(values: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for value in values:
        total.update(value)
    return dict(sorted(total.items()))


def reconcile_readings(plan: Plan, result: Reconciliation) -> None:
    """Readings: sensors -> gateways -> IoT rules -> landing zone -> silver (+ quarantines)."""
    expected = expected_from_sensors(plan)
    sensors = {f: read_json(plan.status_dir / f"sensors-{f}.json", {}) for f in plan.factory_ids}
    gateways = {
        f: gateway_counts(plan.gateway_dir(f) / "sensor_buffer" / "sensor_buffer.sqlite3")
        for f in plan.factory_ids
    }
    ingress = read_json(plan.status_dir / "ingress.json", {})
    firehose = read_json(plan.status_dir / "firehose.json", {})
    landed = lake.landed(plan.landing_dir)
    silver = lake.silver_counts(plan.lake_dir, plan.live_start_ms, plan.live_end_ms)
    lake_quarantine = lake.quarantine_counts(plan.lake_dir)

    published = sum(int(s.get("readings", 0)) for s in sensors.values())
    valid = sum(e["valid"] for e in expected.values())
    # The gateways also store the FailurePredictor's probabilities as readings of the derived
    # series failure_probability (one per prediction the deadband let through): they travel
    # with the sensors' readings from the buffer on, and are counted apart from them here.
    stored = sum(g.get("readings_committed", 0) for g in gateways.values())
    predictions = sum(g.get("predictions_converted", 0) for g in gateways.values())
    predictions_quarantined = sum(g.get("prediction_quarantine_rows", 0) for g in gateways.values())
    committed = stored - predictions
    gateway_quarantined = (
        sum(g.get("quarantined", 0) for g in gateways.values()) - predictions_quarantined
    )
    uploaded = sum(g.get("readings_uploaded", 0) for g in gateways.values())
    lost_at_gateway = sum(
        g.get(k, 0)
        for g in gateways.values()
        for k in ("rejected_full", "dropped_oldest", "downsampled_away", "retention_dropped")
    )
    expected_reasons = _sum([e["quarantined_by_reason"] for e in expected.values()])
    gateway_reasons = _sum([g.get("quarantine_rows_by_reason", {}) for g in gateways.values()])
    lake_quarantined = sum(lake_quarantine.values())
    measured_rows = silver["rows"] - silver["derived_rows"]

    for factory in plan.factory_ids:
        result.check(
            f"{factory}: readings published = readings the contract expects",
            int(sensors[factory].get("readings", 0)),
            expected[factory]["published"],
        )
    result.check(
        "readings published = valid + invalid (the contract)",
        published,
        valid + sum(expected_reasons.values()),
    )
    result.check(
        "readings acknowledged by the gateways (committed + quarantined) = published",
        committed + gateway_quarantined,
        published,
    )
    result.check("readings committed by the gateways = valid readings", committed, valid)
    result.check(
        "gateway quarantine by reason = the contract's rejects by reason",
        gateway_reasons,
        expected_reasons,
    )
    result.check(
        "predictions the gateways quarantined (the predictor sends probabilities in 0..1)",
        predictions_quarantined,
        0,
    )
    result.check(
        "readings lost at the gateways (full, retention, downsampling)", lost_at_gateway, 0
    )
    result.check(
        "readings uploaded (PUBACKed by the cloud) = committed (sensors' + predictions')",
        uploaded,
        stored,
    )
    result.check(
        "readings landed (distinct batches) = uploaded", landed["unique_readings"], uploaded
    )
    result.check(
        "readings in silver, exactly once (distinct sensor-time keys = rows)",
        silver["distinct_keys"],
        silver["rows"],
    )
    result.check("sensors' readings in silver = valid readings", measured_rows, valid)
    result.check(
        "failure_probability rows in silver = predictions the gateways stored",
        silver["derived_rows"],
        predictions,
    )
    result.check("silver rows outside the live span", silver.get("outside_live_span", 0), 0)
    result.check(
        "readings quarantined by the lake",
        lake_quarantined,
        0,
        note="the gateways quarantine first; a lake reject means a seam let one through",
    )
    result.check(
        "published = in silver exactly once + quarantined (by reason)",
        published,
        measured_rows + gateway_quarantined + lake_quarantined,
    )
    result.figures["readings"] = {
        "published": published,
        "published_by_factory": {f: int(s.get("readings", 0)) for f, s in sensors.items()},
        "malformed_payloads": _sum([e["malformed_payloads"] for e in expected.values()]),
        "expected_valid": valid,
        "expected_quarantined_by_reason": expected_reasons,
        "acknowledged_by_gateways": committed + gateway_quarantined,
        "committed_by_gateways": committed,
        "quarantined_at_gateways": gateway_quarantined,
        "quarantined_at_gateways_by_reason": gateway_reasons,
        "duplicates_dropped_at_gateways": sum(
            g.get("duplicates_dropped", 0) for g in gateways.values()
        ),
        "uploaded": uploaded,
        "predictions": {
            "stored_as_failure_probability": predictions,
            "held_back_by_deadband": sum(
                g.get("predictions_suppressed", 0) for g in gateways.values()
            ),
            "quarantined": predictions_quarantined,
            "in_silver": silver["derived_rows"],
        },
        "iot_rule_telemetry_messages": ingress.get("telemetry_messages", 0),
        "iot_rule_telemetry_readings": ingress.get("telemetry_readings", 0),
        "iot_rule_errors": ingress.get("errors", 0),
        "firehose_records": firehose.get("records", 0),
        "landed": landed,
        "silver": silver,
        "quarantined_in_lake_by_reason": lake_quarantine,
    }
    result.figures["gateways"] = gateways


def write(plan: Plan, result: Reconciliation) -> dict[str, Any]:
    document = result.as_dict()
    write_document(plan, document)
    return document


def write_document(plan: Plan, document: dict[str, Any]) -> None:
    write_json(plan.run_dir / RECONCILIATION_FILE, document)


def function_log(path: Path, message: str) -> list[dict[str, Any]]:
    """The JSON log entries of a function (Powertools writes one object per line) whose
    message is `message`: what CloudWatch Logs would hold."""
    import json

    entries: list[dict[str, Any]] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return entries
    for line in lines:
        if f'"{message}"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == message:
            entries.append(entry)
    return entries


def influx_points(server: Any, database: str, start_ms: int, end_ms: int) -> dict[str, int]:
    """Points per measurement in [start, end), queried back from InfluxDB."""
    series = server.query(
        # integers formatted here, not input
        f'SELECT count("value") FROM /.*/ WHERE time >= {start_ms}ms AND time < {end_ms}ms',  # noqa: S608
        database,
    )
    return {s["name"]: int(s["values"][0][1]) for s in series}


def reconcile_cloud(plan: Plan, result: Reconciliation, influx: Any, resources: Any) -> None:
    """The Lambda functions: readings in InfluxDB (queried back), alerts sent and suppressed."""
    from local_platform.connected.aws import INFLUX_BUCKET, drain_queue

    logs = plan.run_dir / "logs"
    readings = result.figures.get("readings", {})
    valid = readings.get("expected_valid", 0)
    committed = readings.get("committed_by_gateways", 0)

    points = influx_points(influx, INFLUX_BUCKET, plan.live_start_ms, plan.live_end_ms)
    written = function_log(logs / "lambda-influx_writer.log", "record written")
    first_writes = [w for w in written if not w.get("duplicate")]
    writer_points = sum(int(w.get("points", 0)) for w in first_writes)
    writer_dead = drain_queue(resources.writer_dead_letters)
    writer_failed = drain_queue(resources.writer_on_failure)
    predictions = readings.get("predictions", {}).get("stored_as_failure_probability", 0)
    derived = set(load_catalog().derived)  # the InfluxDB measurement is the metric
    derived_points = sum(n for name, n in points.items() if name in derived)
    result.check(
        "sensors' readings in InfluxDB (queried back) = valid readings",
        sum(points.values()) - derived_points,
        valid,
    )
    result.check(
        "failure_probability points in InfluxDB (queried back) = predictions the gateways stored",
        derived_points,
        predictions,
    )
    result.check(
        "points the writer wrote (first writes of each batch) = readings uploaded",
        writer_points,
        committed + predictions,
    )
    result.check("records the writer dead-lettered", len(writer_dead), 0)
    result.check("writer batches given up (on-failure destination)", len(writer_failed), 0)

    routed = function_log(logs / "lambda-alert_router.log", "anomaly routed")
    decisions = Counter(
        "duplicate" if r.get("duplicate") else str(r.get("decision")) for r in routed
    )
    invalid = function_log(logs / "lambda-alert_router.log", "invalid anomaly dead-lettered")
    alerts = drain_queue(resources.alert_inbox)
    escalations = drain_queue(resources.escalation_inbox)
    router_failed = drain_queue(resources.router_on_failure)
    ingress = read_json(plan.status_dir / "ingress.json", {})
    sent = decisions["sent"] + decisions["escalated"]
    stream = read_json(plan.status_dir / "stream.json", {})
    result.check(
        "anomalies the router handled = anomalies put on the stream (IoT rule, stream rules, "
        "late evaluation)",
        len(routed) + len(invalid),
        int(ingress.get("anomaly_messages", 0))
        + int(stream.get("anomalies_forwarded", 0))
        + len(result.figures.get("late_data", {}).get("routed_as_late", [])),
    )
    result.check("alerts people received (SNS -> inbox) = alerts sent", len(alerts), sent)
    result.check(
        "escalations received = CRITICAL alerts sent", len(escalations), decisions["escalated"]
    )
    result.check("router batches given up (on-failure destination)", len(router_failed), 0)
    result.figures["influxdb"] = {
        "points_by_measurement": points,
        "points": sum(points.values()),
        "failure_probability_points": derived_points,
        "writer_records": len(written),
        "writer_duplicate_records": len(written) - len(first_writes),
        "writer_dead_letters": len(writer_dead),
        "writer_on_failure": len(writer_failed),
        "writer_status": read_json(plan.status_dir / "lambda-influx_writer.json", {}),
    }
    result.figures["alerts"] = {
        "anomalies_routed": len(routed),
        "decisions": dict(sorted(decisions.items())),
        "sent": sent,
        "suppressed": decisions["suppressed"],
        "not_alerted": decisions["not_alerted"],
        "duplicates": decisions["duplicate"],
        "invalid": len(invalid),
        "received_by_people": len(alerts),
        "escalations_received": len(escalations),
        "router_status": read_json(plan.status_dir / "lambda-alert_router.json", {}),
    }


def _read_lines(path: Path) -> list[dict[str, Any]]:
    import json

    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def reconcile_stream(plan: Plan, result: Reconciliation, clock: Any) -> None:
    """The stream rules: every valid reading fed to them once; every alert with its delay,
    live or late."""
    import json
    from datetime import datetime

    from iiot.anomaly import decode_anomaly

    stream = read_json(plan.status_dir / "stream.json", {})
    valid = result.figures.get("readings", {}).get("expected_valid", 0)
    predictions = (
        result.figures.get("readings", {})
        .get("predictions", {})
        .get("stored_as_failure_probability", 0)
    )
    result.check(
        "readings fed to the stream rules (once per batch) = valid readings + predictions stored",
        int(stream.get("rows", 0)),
        valid + predictions,
    )
    output = plan.stream_dir / "anomalies"
    found = [
        line
        for path in sorted(output.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
        for line in path.read_bytes().splitlines()
        if line.strip() and b'"factory_id":"SENTINEL"' not in line
    ]
    result.check(
        "anomalies the rules found = anomalies forwarded to the anomaly stream",
        len(found),
        int(stream.get("anomalies_forwarded", 0)),
    )
    # Every routed anomaly: when its readings were published (the sensors publish at the
    # simulated time of their timestamp), when it reached the anomaly stream, when the router
    # decided. Late: it reached the stream more than the watermark delay after its readings.
    records: dict[str, dict[str, Any]] = {}
    for entry in _read_lines(plan.cloud_dir / "anomaly-stream-records.jsonl"):
        try:
            anomaly = decode_anomaly(entry["data"].encode())
        except Exception:  # noqa: S112 - an invalid one: the router dead-letters it (counted)
            continue
        records.setdefault(anomaly.anomaly_id, {"anomaly": anomaly, "arrival": entry["arrival"]})
    routed = function_log(plan.run_dir / "logs" / "lambda-alert_router.log", "anomaly routed")
    by_class: Counter[str] = Counter()
    latency_ms: list[float] = []
    late_alerts = []
    for entry in routed:
        if entry.get("duplicate"):
            continue
        record = records.get(str(entry.get("anomaly_id")))
        if record is None:
            continue
        anomaly = record["anomaly"]
        # late: it reached the anomaly stream more than `late_after_wall_s` after its readings
        # were published (wall time, so the drain after the live hours counts too); its delay
        # in simulated time is capped at the end of the live hours (the clock runs on)
        late = record["arrival"] - clock.wall(anomaly.timestamp) > plan.late_after_wall_s
        arrived = min(clock.sim_ms(record["arrival"]), plan.live_end_ms)
        delay_s = (arrived - anomaly.timestamp) / 1000
        decision = str(entry.get("decision"))
        kind = "sent" if decision in ("sent", "escalated") else decision
        by_class[f"{'late' if late else 'live'} {kind}"] += 1
        decided = datetime.fromisoformat(str(entry["timestamp"])).timestamp()
        if kind == "sent":
            if late:
                late_alerts.append(
                    {
                        "anomaly_id": anomaly.anomaly_id,
                        "factory_id": anomaly.factory_id,
                        "machine_id": anomaly.machine_id,
                        "anomaly_type": anomaly.anomaly_type,
                        "source": anomaly.source,
                        "timestamp": anomaly.timestamp,
                        "delay_s": round(delay_s, 1),
                        "delay_h": round(delay_s / 3600, 2),
                    }
                )
            else:
                latency_ms.append((decided - clock.wall(anomaly.timestamp)) * 1000)
    forwarded = _read_lines(plan.stream_dir / "anomalies-forwarded.jsonl")
    result.figures["stream"] = {
        "rows_fed": int(stream.get("rows", 0)),
        "duplicate_batches_skipped": int(stream.get("duplicate_batches", 0)),
        "late_rows": int(stream.get("late_rows", 0)),
        "late_spans": stream.get("late_spans", {}),
        "late_after_s": plan.late_after_s,
        "flink_watermark_delay_s": 5,
        "anomalies_found": len(found),
        "anomalies_by_type": dict(
            sorted(Counter(json.loads(line)["anomaly_type"] for line in found).items())
        ),
        "max_forward_delay_s": max((f["delay_s"] for f in forwarded), default=None),
    }
    result.figures["alerts"] = {
        **result.figures.get("alerts", {}),
        "by_timeliness": dict(sorted(by_class.items())),
        "late_alerts": late_alerts,
        "sensor_to_alert_ms": {
            "alerts": len(latency_ms),
            "p50": _percentile(latency_ms, 50),
            "p99": _percentile(latency_ms, 99),
        },
    }


def reconcile_models(
    plan: Plan,
    result: Reconciliation,
    lifecycles: list[dict[str, Any]],
    predictions: dict[str, dict[str, int]],
    live_ended_wall: float,
    *,
    observed: dict[str, dict[str, int]] | None = None,
    anomaly_lifecycles: list[dict[str, Any]] | None = None,
) -> None:
    """The models' way from the lake back to the gateways: versions published, and the
    predictions each version made on each gateway (observed on the local bus)."""
    published = [m for m in lifecycles if m.get("published")]
    result.check(
        "FailureModel versions published from the lake (start, mid-run)", len(published), 2
    )
    if anomaly_lifecycles is not None:
        result.check(
            "AnomalyModel versions published from the lake (normal operation) and deployed",
            len([m for m in anomaly_lifecycles if m.get("published")]),
            1,
        )
    if len(published) == 2:
        new = published[1]["model_version"]
        result.check(
            "the new version reached the gateways while the sensors were publishing",
            float(published[1].get("deployed_wall", 0)) < live_ended_wall,
            True,
        )
        for factory in plan.factory_ids:
            made = predictions.get(factory, {})
            result.check(
                f"{factory}: the running predictor swapped to the new version (predictions by it)",
                made.get(new, 0) > 0,
                True,
            )
    result.figures["models"] = {
        "lifecycles": lifecycles,
        "anomaly_model_lifecycles": anomaly_lifecycles or [],
        "predictions_by_version": predictions,
        "predictions_seen_on_local_bus": observed or {},
    }


def predictor_statuses(plan: Plan, factory: str) -> list[dict[str, Any]]:
    """The status of each predictor process the factory's gateway ran (one per start)."""
    return [
        read_json(path, {}) for path in sorted(plan.status_dir.glob(f"predictor-{factory}-*.json"))
    ]


PREDICTIONS_TAKEN = ("predictions_converted", "predictions_suppressed", "predictions_quarantined")


def reconcile_predictions(plan: Plan, result: Reconciliation) -> None:
    """The predictor -> buffer hop: every prediction a predictor published that the local
    broker took (PUBACK) was taken by the gateway's buffer (stored, held back by the deadband,
    or quarantined), each once. After a kill -9 the killed process's status may miss what it
    confirmed in its last half second, so there the buffer may have taken more."""
    gateways = result.figures.get("gateways", {})
    by_factory: dict[str, dict[str, Any]] = {}
    for factory in plan.factory_ids:
        statuses = predictor_statuses(plan, factory)
        confirmed = sum(int(s.get("predictions_confirmed", 0)) for s in statuses)
        counts = gateways.get(factory, {})
        taken = sum(int(counts.get(name, 0)) for name in PREDICTIONS_TAKEN)
        refused = sum(int(s.get("predictions_refused", 0)) for s in statuses)
        # the process running at the end (a killed one's last record may show some in flight)
        latest = max(statuses, key=lambda s: float(s.get("updated", 0)), default={})
        in_flight = int(latest.get("predictions_in_flight", 0))
        by_factory[factory] = {
            "predictor_processes": len(statuses),
            "published": sum(int(s.get("predictions_published", 0)) for s in statuses),
            "confirmed_by_local_broker": confirmed,
            "refused_by_local_broker": refused,
            "taken_by_buffer": taken,
            "stored_as_failure_probability": int(counts.get("predictions_converted", 0)),
        }
        if len(statuses) <= 1:
            result.check(
                f"{factory}: predictions the local broker took = predictions the buffer took "
                "(stored + held back by the deadband + quarantined)",
                taken,
                confirmed,
            )
        else:
            result.check(
                f"{factory}: predictions the buffer took >= predictions the local broker took "
                f"({len(statuses)} predictor processes: a kill -9 in between)",
                taken >= confirmed,
                True,
                note=f"buffer {taken}, recorded as confirmed {confirmed}",
            )
        result.check(f"{factory}: predictions the local broker refused", refused, 0)
        result.check(
            f"{factory}: predictions unconfirmed at the end (its running predictor)", in_flight, 0
        )
    result.figures.setdefault("readings", {}).setdefault("predictions", {})["hop"] = by_factory


def predictions_by_version(plan: Plan) -> dict[str, dict[str, int]]:
    """Per factory, the predictions its predictor processes published, by model version
    (each process start writes its own `status/predictor-<factory>-<pid>.json`; counted on the
    local broker's PUBACK)."""
    result: dict[str, dict[str, int]] = {}
    for factory in plan.factory_ids:
        total: Counter[str] = Counter()
        for status in predictor_statuses(plan, factory):
            total.update(status.get("predictions", {}))
        result[factory] = dict(sorted(total.items()))
    return result


def predictor_anomalies(plan: Plan) -> dict[str, str]:
    """Every anomaly the gateways' predictors raised: id -> type, as each predictor process
    recorded it before the anomaly entered its outbox (`status/predictor-<factory>-<pid>.json`)."""
    raised: dict[str, str] = {}
    for factory in plan.factory_ids:
        for path in plan.status_dir.glob(f"predictor-{factory}-*.json"):
            raised.update(read_json(path, {}).get("anomalies", {}))
    return raised


def outbox_waiting(plan: Plan) -> dict[str, int]:
    """Per factory, the anomalies still waiting in its predictor's outbox (not acknowledged by
    the cloud)."""
    waiting: dict[str, int] = {}
    for factory in plan.factory_ids:
        path = plan.gateway_dir(factory) / "failure_predictor" / "outbox.sqlite3"
        if not path.exists():
            waiting[factory] = 0
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            waiting[factory] = int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except sqlite3.OperationalError:  # created, no table yet: nothing was ever queued
            waiting[factory] = 0
        finally:
            db.close()
    return waiting


def _anomaly_ledger(plan: Plan) -> dict[str, Any]:
    """anomaly id -> the anomaly as it first reached the anomaly stream (the router's input)."""
    from iiot.anomaly import decode_anomaly

    records: dict[str, Any] = {}
    for entry in _read_lines(plan.cloud_dir / "anomaly-stream-records.jsonl"):
        try:
            anomaly = decode_anomaly(entry["data"].encode())
        except Exception:  # noqa: S112 - an invalid one: the router dead-letters it (counted)
            continue
        records.setdefault(anomaly.anomaly_id, anomaly)
    return records


def reconcile_predictor_anomalies(plan: Plan, result: Reconciliation) -> None:
    """The predictors' anomalies (FAILURE_PREDICTED, MULTIVARIATE_ANOMALY), by id: each one a
    predictor raised went through its outbox to IoT Core and was routed exactly once by the
    alert router (a redelivery after a lost PUBACK or a restart is a duplicate the router
    recognises), none is left waiting, and none reached the router that no predictor raised."""
    raised = predictor_anomalies(plan)
    ledger = _anomaly_ledger(plan)
    routed = function_log(plan.run_dir / "logs" / "lambda-alert_router.log", "anomaly routed")
    first: Counter[str] = Counter()
    repeated: Counter[str] = Counter()
    decisions: dict[str, Counter[str]] = {}
    for entry in routed:
        anomaly_id = str(entry.get("anomaly_id"))
        if entry.get("duplicate"):
            repeated[anomaly_id] += 1
            continue
        first[anomaly_id] += 1
        if anomaly_id in raised:
            decisions.setdefault(raised[anomaly_id], Counter())[str(entry.get("decision"))] += 1
    waiting = outbox_waiting(plan)
    once = sum(first[i] == 1 for i in raised)
    strangers = sorted(
        i for i, a in ledger.items() if a.source == "model" and i not in raised and first[i]
    )
    result.check(
        "predictor anomalies routed exactly once by the alert router (by id) = anomalies the "
        "predictors raised",
        once,
        len(raised),
        note=f"{sum(1 for i in raised if not first[i])} never routed, "
        f"{sum(1 for i in raised if first[i] > 1)} routed twice",
    )
    result.check("predictor anomalies left in the gateways' outboxes", sum(waiting.values()), 0)
    result.check(
        "anomalies from a predictor at the router that no predictor raised", len(strangers), 0
    )
    result.figures["predictor_anomalies"] = {
        "raised": len(raised),
        "raised_by_type": dict(sorted(Counter(raised.values()).items())),
        "routed_once": once,
        "redelivered_and_recognised_as_duplicates": sum(repeated[i] for i in raised),
        "decisions_by_type": {k: dict(sorted(v.items())) for k, v in sorted(decisions.items())},
        "left_in_outboxes": waiting,
        "unknown_at_router": strangers[:20],
    }
