"""What a run directory holds, read into the report's panels.

Every panel reads what the run left and says "not in this run" with the reason when its input
is absent, so the report works on any run directory: `make demo`'s `.demo/` (simulation,
contract quarantine, lake, stream alerts, model), a connected run with its reconciliation, a
bare `iiot simulate` output, or an empty folder. A panel is a dict: `available`, `reason`
(when not), `source` (the files it read) and its data.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.model_runtime import DEFAULT_ALERT_THRESHOLD
from iiot.catalog import MetricCatalog, load_catalog
from spark_jobs import kpis

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
HORIZON_MS = 24 * HOUR_MS  # the failure model's horizon: an alert counts if a failure follows
BIN_MS = 10 * 60_000  # readings are shown as 10-minute means
SCATTER_POINTS = 4000
# The plant's shifts (local_platform/simulator.py): the night shift runs at the lowest load,
# so planned maintenance goes there.
SHIFTS = (("early", 6, 14), ("late", 14, 22), ("night", 22, 30))
PREVENTIVE_HOURS = 2.0  # a planned job stops the machine for 1-3 h in the simulator

Panel = dict[str, Any]


def missing(reason: str) -> Panel:
    return {"available": False, "reason": reason}


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


@dataclass
class Run:
    """Where a run's inputs are, found by name under its directory."""

    root: Path

    @property
    def simulation(self) -> Path:
        return self.root / "simulation" if (self.root / "simulation").is_dir() else self.root

    def has_simulation(self) -> bool:
        return (self.simulation / "machines.csv").is_file()

    def rows(self, name: str) -> list[dict[str, str]]:
        path = self.simulation / name
        if not path.is_file():
            return []
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def manifest(self) -> dict[str, Any]:
        path = self.simulation / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def find(self, pattern: str) -> list[Path]:
        return sorted(p for p in self.root.glob(f"**/{pattern}") if p.is_file())


def _guard(name: str, build: Callable[[], Panel]) -> Panel:
    """A panel whose input is broken says so instead of failing the whole report."""
    try:
        return build()
    except Exception as exc:  # the report must render whatever one input looks like
        log.warning("report panel failed", extra={"panel": name, "error": repr(exc)})
        return missing(f"could not read its input: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------- the run's history


def machine_history(run: Run) -> dict[str, Any]:
    """Machines, failures, maintenance and the run's span: the simulation's ground truth, or
    for a connected run (no simulation files) its lake's maintenance tables and plan."""
    if not run.has_simulation():
        from local_platform.report.connected_run import connected_history

        connected = connected_history(run.root)
        if connected is not None:
            return connected
    manifest = run.manifest()
    machines = run.rows("machines.csv")
    failures = run.rows("failures.csv")
    maintenance = run.rows("maintenance_records.csv")
    start = manifest.get("start_ms")
    end = manifest.get("end_ms")
    return {
        "machines": machines,
        "failures": failures,
        "maintenance": maintenance,
        "start_ms": int(start) if start is not None else None,
        "end_ms": int(end) if end is not None else None,
        "manifest": manifest,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def reliability(history: dict[str, Any], predictions: dict[str, Any] | None) -> Panel:
    """Availability, downtime, MTBF, MTTR, failures caught and missed per machine and factory."""
    start, end = history["start_ms"], history["end_ms"]
    if not history["machines"] or start is None or end is None:
        return missing(
            "no simulation with machines.csv and manifest.json, or connected run with "
            "plan.json, in this run"
        )
    span_h = (end - start) / HOUR_MS
    per_machine: dict[str, dict[str, Any]] = {}
    for machine in history["machines"]:
        per_machine[machine["machine_id"]] = {
            "machine_id": machine["machine_id"],
            "factory_id": machine["factory_id"],
            "model": machine["model"],
            "downtime_h": 0.0,
            "unplanned_h": 0.0,
            "planned_h": 0.0,
            "failures": 0,
            "repairs_h": [],
        }
    for job in history["maintenance"]:
        entry = per_machine.get(job["machine_id"])
        if entry is None:
            continue
        begin = max(int(job["started_at_ms"]), start)
        finish = min(int(job["completed_at_ms"]), end)
        hours = max(finish - begin, 0) / HOUR_MS
        entry["downtime_h"] += hours
        entry["unplanned_h" if job["kind"] == "corrective" else "planned_h"] += hours
        if job["kind"] == "corrective":
            entry["repairs_h"].append(
                (int(job["completed_at_ms"]) - int(job["started_at_ms"])) / HOUR_MS
            )
    alerts = {m: p["alerts"] for m, p in (predictions or {}).items()}
    predicted_from = history.get("predicted_from_ms")
    outcomes = []
    before = 0  # failed before the run began (their repairs may fall inside it)
    for failure in history["failures"]:
        failed = int(failure["failed_at_ms"])
        entry = per_machine.get(failure["machine_id"])
        before += entry is not None and failed < start
        if entry is None or not start <= failed < end:
            continue
        entry["failures"] += 1
        warned = [
            t for t in alerts.get(failure["machine_id"], []) if failed - HORIZON_MS <= t < failed
        ]
        judged = predictions is not None and (predicted_from is None or failed >= predicted_from)
        outcomes.append(
            {
                "failure_id": failure["failure_id"],
                "machine_id": failure["machine_id"],
                "factory_id": failure["factory_id"],
                "mode": failure["failure_mode"],
                "failed_at": _iso(failed),
                "caught": bool(warned) if judged else None,
                "lead_h": round((failed - min(warned)) / HOUR_MS, 1) if warned and judged else None,
                **(
                    {"not_judged": "before the live hours (no predictor ran)"}
                    if predictions is not None and not judged
                    else {}
                ),
            }
        )
    rows = []
    for entry in per_machine.values():
        repairs = entry.pop("repairs_h")
        # The lake's gold machine_day_kpis uses the same arithmetic (spark_jobs.kpis).
        rows.append(
            {
                **entry,
                "repairs_h": repairs,
                "availability": _round(kpis.availability(span_h, entry["downtime_h"]), 4),
                "downtime_h": round(entry["downtime_h"], 2),
                "unplanned_h": round(entry["unplanned_h"], 2),
                "planned_h": round(entry["planned_h"], 2),
                "mtbf_h": _round(kpis.mtbf_h(span_h, entry["downtime_h"], entry["failures"]), 1),
                "mttr_h": _round(kpis.mttr_h(sum(repairs), len(repairs)), 2),
            }
        )
    factories: dict[str, dict[str, Any]] = {}
    for row in rows:
        f = factories.setdefault(
            row["factory_id"],
            {"factory_id": row["factory_id"], "machines": 0, "downtime_h": 0.0, "failures": 0},
        )
        f["machines"] += 1
        f["downtime_h"] += row["downtime_h"]
        f["failures"] += row["failures"]
    for f in factories.values():
        machine_hours = f["machines"] * span_h
        f["availability"] = _round(kpis.availability(machine_hours, f["downtime_h"]), 4)
        f["downtime_h"] = round(f["downtime_h"], 2)
        f["mtbf_h"] = _round(kpis.mtbf_h(machine_hours, f["downtime_h"], f["failures"]), 1)
        # every repair of the factory counts once (not a mean of its machines' means)
        repairs = [h for r in rows if r["factory_id"] == f["factory_id"] for h in r["repairs_h"]]
        f["mttr_h"] = _round(kpis.mttr_h(sum(repairs), len(repairs)), 2)
    for row in rows:
        del row["repairs_h"]
    caught = [o for o in outcomes if o["caught"]]
    return {
        "available": True,
        "source": history.get(
            "source", "simulation/failures.csv, maintenance_records.csv, manifest.json"
        )
        + (" + the failure predictor's alerts" if predictions is not None else ""),
        "span_h": round(span_h, 2),
        "machines": sorted(rows, key=lambda r: r["machine_id"]),
        "factories": sorted(factories.values(), key=lambda f: f["factory_id"]),
        "failures": outcomes,
        "failures_before": before,
        "caught": len(caught),
        "missed": sum(1 for o in outcomes if o["caught"] is False),
        "median_lead_h": float(np.median([o["lead_h"] for o in caught])) if caught else None,
    }


# ------------------------------------------------------------------------ readings panels


def _valid_readings(run: Run, catalog: MetricCatalog) -> dict[str, Any] | None:
    """The simulation's readings, or the lake's silver readings when the run has no
    simulation files (a connected run regenerates its sensors' messages from the seed)."""
    import pyarrow.parquet as pq

    from ml_pipeline.dataset import reading_columns

    columns = ["timestamp", "machine_id", "metric", "value"]
    path = run.simulation / "readings.parquet"
    silver = run.root / "lake" / "silver" / "readings"
    if path.is_file():
        table = pq.read_table(path, columns=columns)
    elif (silver / "_delta_log").is_dir():
        from deltalake import DeltaTable

        table = DeltaTable(str(silver)).to_pyarrow_table(columns=columns)
    else:
        return None
    machine, metric, timestamp, value, valid = reading_columns(table, catalog)
    # the failure predictor's probability: a derived series, stored like a reading (connected
    # runs); the risk panels read it
    risk = np.isin(
        metric, [name for name, m in catalog.derived.items() if m.derived == "failure_predictor"]
    )
    return {
        "machine": machine[valid].astype(str),
        "metric": metric[valid].astype(str),
        "timestamp": timestamp[valid],
        "value": value[valid],
        "risk": {
            "machine": machine[risk].astype(str),
            "timestamp": timestamp[risk],
            "value": value[risk],
        },
    }


def readings_panel(readings: dict[str, np.ndarray] | None, catalog: MetricCatalog) -> Panel:
    """10-minute means per machine and metric, and each machine's latest reading per metric."""
    if readings is None:
        return missing("no simulation/readings.parquet or lake silver readings in this run")
    if not len(readings["timestamp"]):
        return missing("the run's readings are empty")
    t0 = int(readings["timestamp"].min())
    bins = ((readings["timestamp"] - t0) // BIN_MS).astype(np.int64)
    n_bins = int(bins.max()) + 1
    series: dict[str, dict[str, list[float | None]]] = {}
    latest: dict[str, dict[str, float]] = {}
    for machine in np.unique(readings["machine"]):
        rows = readings["machine"] == machine
        series[str(machine)] = {}
        latest[str(machine)] = {}
        for metric in np.unique(readings["metric"][rows]):
            both = rows & (readings["metric"] == metric)
            sums = np.bincount(bins[both], readings["value"][both], minlength=n_bins)
            counts = np.bincount(bins[both], minlength=n_bins)
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            series[str(machine)][str(metric)] = [
                None if np.isnan(v) else round(float(v), 3) for v in means
            ]
            last = int(np.argmax(readings["timestamp"][both]))
            latest[str(machine)][str(metric)] = round(float(readings["value"][both][last]), 2)
    limits = {
        name: {"min": m.edge.min, "max": m.edge.max, "unit": m.unit}
        for name, m in catalog.measured.items()  # the sensors'; the risk has its own panel
    }
    return {
        "available": True,
        "source": "readings (simulation/readings.parquet or lake silver; valid range only, "
        "10-minute means)",
        "bins": [_iso(t0 + i * BIN_MS) for i in range(n_bins)],
        "series": series,
        "latest": latest,
        "limits": limits,
    }


def scatter_panel(run: Run) -> Panel:
    """Temperature against pressure per machine and timestamp, flagged by the lake's silver
    anomaly rule (either reading's z-score beyond 3), sampled to a few thousand points with
    every flagged point kept first."""
    silver = run.root / "lake" / "silver" / "readings"
    if not (silver / "_delta_log").is_dir():
        return missing("no lake (lake/silver/readings) in this run")
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    table = DeltaTable(str(silver)).to_pyarrow_table(
        columns=["machine_id", "timestamp", "metric", "value", "is_anomaly"]
    )
    # delta-rs may read strings as string_view, which arrow's compute kernels and the filter
    # pushdown do not all take: compare and join on plain strings
    table = table.set_column(0, "machine_id", table.column("machine_id").cast("string")).set_column(
        2, "metric", table.column("metric").cast("string")
    )
    table = table.set_column(1, "timestamp", table.column("timestamp").cast("int64"))
    temperature = table.filter(pc.equal(table.column("metric"), "temperature"))
    pressure = table.filter(pc.equal(table.column("metric"), "pressure"))
    joined = temperature.select(["machine_id", "timestamp", "value", "is_anomaly"]).join(
        pressure.select(["machine_id", "timestamp", "value", "is_anomaly"]).rename_columns(
            ["machine_id", "timestamp", "pressure", "pressure_anomaly"]
        ),
        keys=["machine_id", "timestamp"],
    )
    machine = joined.column("machine_id").to_numpy(False).astype(str)
    temp = joined.column("value").to_numpy()
    pres = joined.column("pressure").to_numpy()
    flag = (
        pc.or_(
            pc.fill_null(joined.column("is_anomaly"), False),
            pc.fill_null(joined.column("pressure_anomaly"), False),
        )
        .to_numpy(False)
        .astype(bool)
    )
    # a uniform sample keeps the picture's proportions; flagged points are few, so at least a
    # fifth of the sample is flagged when there are that many
    rng = np.random.default_rng(0)
    flagged = np.flatnonzero(flag)
    normal = np.flatnonzero(~flag)
    share = max(len(flagged) / max(len(flag), 1), 0.2)
    keep_flagged = rng.permutation(flagged)[: int(SCATTER_POINTS * share)]
    keep = np.concatenate(
        [keep_flagged, rng.permutation(normal)[: SCATTER_POINTS - len(keep_flagged)]]
    )
    return {
        "available": True,
        "source": "lake/silver/readings (is_anomaly: z-score rule), sampled",
        "points": len(flag),
        "anomalies": int(flag.sum()),
        "machine": machine[keep].tolist(),
        "temperature": np.round(temp[keep], 2).tolist(),
        "pressure": np.round(pres[keep], 2).tolist(),
        "anomaly": flag[keep].tolist(),
    }


def stream_alerts(run: Run) -> list[dict[str, str]]:
    """The alerts the stream rules sent (stream/alerts.txt), one dict per alert."""
    path = run.root / "stream" / "alerts.txt"
    if not path.is_file():
        return []
    alerts = []
    for block in path.read_text().split("\n\n"):
        fields = dict(re.findall(r"^(\w[\w ]*?):\s+(.*)$", block, re.MULTILINE))
        if "Machine" in fields:
            alerts.append(fields)
    return alerts


def anomaly_counts(run: Run, predictions: dict[str, Any] | None) -> Panel:
    """Anomalies per machine by where they were found: the lake's z-score flags (gold), the
    stream rules' alerts, the failure predictor's alerts."""
    counts: dict[str, dict[str, int]] = {}
    sources = []
    gold = run.root / "lake" / "gold" / "machine_daily"
    if (gold / "_delta_log").is_dir():
        from deltalake import DeltaTable

        table = DeltaTable(str(gold)).to_pyarrow_table(columns=["machine_id", "anomaly_count"])
        for machine, count in zip(
            table.column("machine_id").to_pylist(),
            table.column("anomaly_count").to_pylist(),
            strict=True,
        ):
            counts.setdefault(machine, {}).setdefault("lake z-score flags", 0)
            counts[machine]["lake z-score flags"] += int(count or 0)
        sources.append("lake/gold/machine_daily")
    alerts = stream_alerts(run)
    if alerts:
        for alert in alerts:
            machine = alert["Machine"]
            counts.setdefault(machine, {}).setdefault("stream rule alerts", 0)
            counts[machine]["stream rule alerts"] += 1
        sources.append("stream/alerts.txt")
    else:
        from local_platform.report.connected_run import anomaly_records

        stream = [
            a
            for a in anomaly_records(run.root)
            if a.get("state", "RAISED") == "RAISED" and a.get("source") in {"stream", "edge"}
        ]
        for anomaly in stream:
            name = "stream rule alerts" if anomaly["source"] == "stream" else "edge rule alerts"
            counts.setdefault(anomaly.get("machine_id", "?"), {}).setdefault(name, 0)
            counts[anomaly.get("machine_id", "?")][name] += 1
        if stream:
            sources.append("cloud/anomaly-stream-records.jsonl")
    if predictions is not None:
        for machine, p in predictions.items():
            counts.setdefault(machine, {})["failure predictor alerts"] = len(p["alerts"])
        sources.append("failure predictor alerts")
    if not counts:
        return missing("no lake gold, stream alerts or failure model in this run")
    return {"available": True, "source": ", ".join(sources), "counts": counts}


# ------------------------------------------------------------------- risk and maintenance


def predictor_panel(run: Run, catalog: MetricCatalog) -> dict[str, Any] | None:
    """The failure predictor replayed over the run (None when the run has no model)."""
    model_dir = run.root / "ml" / "failure_model"
    if not (model_dir / "manifest.json").is_file() or not run.has_simulation():
        return None
    from local_platform.report.predictions import replay_run

    replay = replay_run(run.simulation, model_dir, catalog)
    out = {}
    for machine, p in replay.items():
        step = max(len(p.times) // 300, 1)  # a few hundred points per machine
        out[machine] = {
            "factory_id": p.factory_id,
            "times": [_iso(t) for t in p.times[::step]],
            "probabilities": [round(v, 4) for v in p.probabilities[::step]],
            "last": p.last,
            "alerts": p.alerts,
        }
    return out


def _shift_of(moment_ms: int) -> str:
    """The shift under way at `moment_ms` (UTC), as 'night shift 22:00-06:00'."""
    hour = datetime.fromtimestamp(moment_ms / 1000, tz=UTC).hour
    for name, begin, finish in SHIFTS:
        if begin <= hour < finish or begin <= hour + 24 < finish:
            return f"{name} shift {begin:02d}:00-{finish % 24:02d}:00"
    raise AssertionError("unreachable: the shifts cover the day")


def maintenance_plan(
    predictions: dict[str, Any] | None,
    reliability_panel: Panel,
    end_ms: int | None,
    alert_threshold: float = DEFAULT_ALERT_THRESHOLD,
    predictor_label: str = "failure predictor replay",
    policy: Any = None,
) -> Panel:
    """Machines ranked by the predictor's latest failure probability, and for each at or above
    the job threshold a planned job by the policy the downtime what-if measures
    (`whatif.Policy`, or `policy`): the job threshold is the policy's alert threshold, never
    below the model's own (`alert_threshold`); the job starts at the first shift change at
    least the lead time after the run's end, or after the lead alone when the probability
    reaches the predictor's shutdown level. The probability is of a failure within the model's
    24 h horizon, so no job waits longer. Expected downtime avoided = probability x (mean
    repair time - a planned job's stop)."""
    if predictions is None:
        return missing(
            "no failure model (ml/failure_model) and simulation, or gateway predictor alerts, "
            "in this run"
        )
    if end_ms is None:
        return missing("the run's manifest gives no end time")
    from local_platform.report.whatif import Policy, next_shift_change

    policy = policy or Policy()
    jobs_from = max(alert_threshold, policy.alert_threshold or 0.0)
    mttr = [r["mttr_h"] for r in reliability_panel.get("machines", []) if r.get("mttr_h")]
    repair_h = float(np.mean(mttr)) if mttr else 5.0  # the simulator's repairs take 2-8 h
    ranking = []
    for machine, p in predictions.items():
        probability = p["last"] or 0.0
        entry: dict[str, Any] = {
            "machine_id": machine,
            "factory_id": p["factory_id"],
            # None: the predictor said nothing of it (a gateway's alerts carry the probability
            # only when it crosses a threshold)
            "probability": round(probability, 3) if p["last"] is not None else None,
            "alerts": len(p["alerts"]),
        }
        if probability >= jobs_from:
            earliest = end_ms + int(policy.lead_hours * HOUR_MS)
            urgent = probability >= policy.urgent_probability
            when = earliest if urgent else next_shift_change(earliest)
            entry.update(
                action="stop and service now (inspect bearings, seals, cooling)"
                if urgent
                else "service (inspect bearings, seals, cooling)",
                when=_iso(when),
                window=_shift_of(when) + (" (urgent: at once)" if urgent else " (from its start)"),
                downtime_avoided_h=round(probability * max(repair_h - PREVENTIVE_HOURS, 0), 2),
            )
        ranking.append(entry)
    ranking.sort(key=lambda e: -(e["probability"] or 0.0))
    planned = [e for e in ranking if "when" in e]
    return {
        "available": True,
        "source": f"{predictor_label} (latest probability per machine)",
        "ranking": ranking,
        "planned": len(planned),
        "alert_threshold": alert_threshold,
        "job_threshold": jobs_from,
        "urgent_probability": policy.urgent_probability,
        "lead_h": policy.lead_hours,
        "repair_h": round(repair_h, 2),
        "downtime_avoided_h": round(sum(e["downtime_avoided_h"] for e in planned), 2),
    }


def alert_precision(
    run: Run,
    predictions: dict[str, Any] | None,
    history: dict[str, Any],
    predictor_label: str = "failure predictor (replayed)",
) -> Panel:
    """Share of alerts followed by a failure on the same machine within 24 h, per source.

    An alert less than 24 h before the run's end that no failure has followed yet is open: the
    run cannot tell whether it was right. Leaving the open ones out would favour the alerts
    already proven right (on a 24 h run nearly every alert is open), so the precision is a
    range: `precision` counts the open alerts as false alarms, `precision_open_right` as
    hits; the truth lies between.

    What "an alert" is: for a connected run (`ml/alert_quality.json` with a `definition`,
    local_platform/connected/alert_quality.py) the rows are first the notifications the alert
    router sent to people (an alarm is what an operator is told: repeats its cooldown held back
    and start-up transients it shelved after maintenance reached nobody), then every RAISED
    anomaly at the router (`raw_anomalies`: the detectors' own precision, never hidden by the
    router). The step-by-step demo's file has one definition (the predictor's alerts)."""
    end = history.get("end_ms")
    failures: dict[str, list[int]] = {}
    for failure in history["failures"]:
        failures.setdefault(failure["machine_id"], []).append(int(failure["failed_at_ms"]))

    def followed(machine: str, t: int) -> bool:
        return any(t <= f < t + HORIZON_MS for f in failures.get(machine, []))

    def still_open(machine: str, t: int) -> bool:
        return end is not None and t + HORIZON_MS > end and not followed(machine, t)

    rows: list[dict[str, Any]] = []
    if predictions is not None:
        alerts = [(m, t) for m, p in predictions.items() for t in p["alerts"]]
        hits = sum(followed(m, t) for m, t in alerts)
        rows.append(
            {
                "source": predictor_label,
                "alerts": len(alerts),
                "followed": hits,
                "open": sum(still_open(m, t) for m, t in alerts),
            }
        )
    quality = run.root / "ml" / "alert_quality.json"
    if quality.is_file():
        q = json.loads(quality.read_text())
        connected = "definition" in q  # the connected run's two definitions
        parts = [("notifications" if connected else "demo ml step", q)]
        if connected and "raw_anomalies" in q:
            parts.append(("every RAISED anomaly", q["raw_anomalies"]))
        for label, part in parts:
            for kind, entry in part.get("by_type", {}).items():
                rows.append(
                    {
                        "source": f"{label}: {kind}",
                        "alerts": entry.get("alerts", 0),
                        "followed": entry.get("followed", 0),
                        "open": None,  # its own evaluation (ml_pipeline.evaluate.alert_quality)
                    }
                )
    stream = stream_alerts(run)
    if not stream:
        from local_platform.report.connected_run import anomaly_records

        raised = [
            a
            for a in anomaly_records(run.root)
            if a.get("source") == "stream" and a.get("state", "RAISED") == "RAISED"
        ]
        if raised:
            rows.append(
                {
                    "source": "stream rules (anomaly stream)",
                    "alerts": len(raised),
                    "followed": sum(followed(a["machine_id"], int(a["timestamp"])) for a in raised),
                    "open": sum(still_open(a["machine_id"], int(a["timestamp"])) for a in raised),
                }
            )
    if stream:
        hits = untimed = pending = 0
        for alert in stream:
            try:
                when = datetime.strptime(alert.get("Time", "")[:19], "%Y-%m-%d %H:%M:%S")
            except ValueError:  # an alert without a readable time cannot be matched
                untimed += 1
                continue
            at = int(when.replace(tzinfo=UTC).timestamp() * 1000)
            hits += followed(alert["Machine"], at)
            pending += still_open(alert["Machine"], at)
        source = "stream rules" + (f" ({untimed} without a readable time)" if untimed else "")
        rows.append(
            {"source": source, "alerts": len(stream) - untimed, "followed": hits, "open": pending}
        )
    if not rows:
        return missing("no alerts in this run (no stream alerts, failure model or ml figures)")
    for row in rows:
        alerts, hits = row["alerts"], row["followed"]
        row["precision"] = round(hits / alerts, 3) if alerts else None
        row["precision_open_right"] = (
            round((hits + row["open"]) / alerts, 3) if alerts and row["open"] is not None else None
        )
    return {
        "available": True,
        "source": "alerts vs "
        + ("the run's failures" if "source" in history else "simulation/failures.csv"),
        "rows": rows,
    }


# ------------------------------------------------------------------------- data-path health


def data_path(run: Run) -> Panel:
    """Quarantine by reason, the lake's tables, the gateway buffer, and whatever the connected
    run wrote about backlogs, outages and its reconciliation."""
    panel: Panel = {"available": False, "source": []}
    quarantine = run.root / "quarantine.jsonl"
    if quarantine.is_file():
        reasons: Counter[str] = Counter()
        with quarantine.open("rb") as handle:
            for line in handle:
                reason = line.rsplit(b"\t", 1)[-1].decode("utf-8", "replace").strip()
                reasons[reason.split(":")[0] or "unknown"] += 1
        panel["contract_quarantine"] = dict(reasons.most_common())
        panel["source"].append("quarantine.jsonl")
    lake = run.root / "lake"
    if lake.is_dir():
        from deltalake import DeltaTable

        tables = {}
        for name in (
            "bronze/raw_batches",
            "silver/readings",
            "silver/quarantine",
            "gold/machine_daily",
            "gold/factory_daily",
            "silver/maintenance_records",
            "silver/failures",
            "silver/cmms_rejects",
            "gold/machine_day_kpis",
        ):
            path = lake / name
            if (path / "_delta_log").is_dir():
                dataset = DeltaTable(str(path)).to_pyarrow_dataset()
                tables[name.replace("/", ".")] = dataset.count_rows()
        panel["lake_tables"] = tables
        silver_q = lake / "silver" / "quarantine"
        if (silver_q / "_delta_log").is_dir():
            fields = DeltaTable(str(silver_q)).to_pyarrow_table(columns=["reason_field"])
            panel["lake_quarantine"] = dict(
                Counter(fields.column("reason_field").to_pylist()).most_common()
            )
        panel["source"].append("lake/")
    buffer = run.root / "edge" / "sensor_buffer.sqlite3"
    if buffer.is_file():
        import sqlite3

        with sqlite3.connect(f"file:{buffer}?mode=ro", uri=True) as db:
            names = [
                r[0]
                for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
                )
            ]
            panel["gateway_buffer"] = {
                name: db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]  # noqa: S608
                for name in names
            }
        panel["source"].append("edge/sensor_buffer.sqlite3")
    from local_platform.report.connected_run import gateway_quarantine

    gateways = gateway_quarantine(run.root)
    source = "gateways/*/sensor_buffer/sensor_buffer.sqlite3 (quarantine)"
    if not any(gateways.values()):
        recon = _json_or_none(run.root / "reconciliation.json") or {}
        by_gateway = {
            f: g.get("quarantine_rows_by_reason", {})
            for f, g in (recon.get("gateways") or {}).items()
            if isinstance(g, dict)
        }
        total = (recon.get("readings") or {}).get("quarantined_at_gateways_by_reason")
        gateways = by_gateway if any(by_gateway.values()) else {"gateways": total or {}}
        source = "reconciliation.json (gateways' quarantine)"
    if any(gateways.values()):
        panel["gateway_quarantine"] = {f: r for f, r in gateways.items() if r}
        panel["source"].append(source)
    documents = {}
    # the connected run writes reconciliation.json, figures.json and faults.json (outages,
    # kills) in its directory (local_platform/connected)
    for pattern in (
        "*reconcil*.json",
        "*figures*.json",
        "faults.json",
        "*outage*.json",
        "*backlog*.json",
    ):
        for path in run.find(pattern):
            if path.name in {"demo_figures.json"}:
                continue
            try:
                documents[str(path.relative_to(run.root))] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                documents[str(path.relative_to(run.root))] = {"unreadable": str(exc)}
    panel["documents"] = documents
    panel["reconciliation"] = {k: v for k, v in documents.items() if "reconcil" in k}
    if documents:
        panel["source"].append(", ".join(documents))
    panel["available"] = bool(panel["source"])
    if not panel["available"]:
        return missing("no quarantine, lake, gateway buffer or connected-run figures in this run")
    panel["source"] = ", ".join(panel["source"])
    return panel


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def cost_panel() -> Panel:
    from local_platform.report.cost import estimate_environment, load_prices

    book = load_prices()
    statuses = Counter(price.status for price in book.prices.values())

    envs = {}
    for name in ("dev", "staging", "prod"):
        deployed = estimate_environment(name)
        envs[name] = {
            "machines": deployed.machines,
            "total": round(deployed.total, 2),
            "per_machine": round(deployed.per_machine, 2),
            "by_service_per_machine": {
                k: round(v / deployed.machines, 3) for k, v in deployed.by_service().items()
            },
            "drivers": deployed.drivers(3),
            "warnings": deployed.capacity_warnings,
        }
    return {
        "available": True,
        "source": "iiot cost (config/prices.yaml)",
        "environments": envs,
        "prices": {
            "region": book.region,
            "checked_on": book.checked_on,
            "count": len(book.prices),
            "statuses": dict(statuses.most_common()),
        },
    }


def whatif_panel(run: Run) -> Panel:
    path = run.root / "whatif" / "whatif.json"
    if not path.is_file():
        return missing("no downtime what-if in this run (iiot whatif --run DIR writes it)")
    return {"available": True, "source": "whatif/whatif.json", **json.loads(path.read_text())}


def _alert_threshold(run: Run) -> float:
    """The alert threshold the run's failure model raises FAILURE_PREDICTED at."""
    from local_platform.report.predictions import alert_thresholds

    return alert_thresholds(run.root / "ml" / "failure_model").get(
        "alertThreshold", DEFAULT_ALERT_THRESHOLD
    )


def collect(run_dir: Path, catalog: MetricCatalog | None = None) -> dict[str, Any]:
    """Every panel of the report for `run_dir`."""
    catalog = catalog or load_catalog()
    run = Run(run_dir)
    history = _guard_history(run)
    predictions = None
    predictor_label = "failure predictor (replayed)"
    alert_threshold: float | None = None
    readings = None
    try:
        readings = _valid_readings(run, catalog)
    except Exception as exc:
        log.warning("readings unreadable", extra={"error": repr(exc)})
    try:
        predictions = predictor_panel(run, catalog)
    except Exception as exc:  # a broken model leaves the risk panels empty, not the report
        log.warning("failure predictor replay failed", extra={"error": repr(exc)})
    risk_label = predictor_label
    if predictions is None and not run.has_simulation():
        # a connected run: the gateways' predictors ran on the live readings
        from local_platform.report.connected_run import gateway_predictions, with_stored_risk

        try:
            predictions, alert_threshold = gateway_predictions(run.root, history["machines"], _iso)
            predictor_label = risk_label = "gateways' failure predictors (anomaly stream)"
        except Exception as exc:
            log.warning("gateway predictions unreadable", extra={"error": repr(exc)})
        stored = readings.get("risk") if readings else None
        if stored is not None and len(stored["value"]):
            predictions = with_stored_risk(predictions, history["machines"], stored, _iso)
            risk_label = (
                "gateways' failure predictors (their stored failure_probability, lake silver; "
                "alerts from the anomaly stream)"
            )
    rel = _guard("reliability", lambda: reliability(history, predictions))
    manifest = history["manifest"]
    overview = {
        "available": bool(manifest) or bool(history["machines"]),
        "reason": "no simulation or connected run in this run",
        "run_dir": str(run_dir),
        "factories": sorted({m["factory_id"] for m in history["machines"]}),
        "machines": len(history["machines"]),
        "start": _iso(history["start_ms"]) if history["start_ms"] else None,
        "end": _iso(history["end_ms"]) if history["end_ms"] else None,
        "readings": manifest.get("readings"),
        # failures in the run's span; one before it (its repair may fall inside) apart
        "failures": len(rel.get("failures", [])) if rel.get("available") else None,
        "failures_before": rel.get("failures_before", 0) if rel.get("available") else 0,
        "maintenance_jobs": len(history["maintenance"]),
        "malformed_payloads": sum(manifest.get("malformed_json_lines", {}).values()),
        "seed": manifest.get("config", {}).get("seed"),
    }
    return {
        "generated_at": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "overview": overview,
        "readings": _guard("readings", lambda: readings_panel(readings, catalog)),
        "scatter": _guard("scatter", lambda: scatter_panel(run)),
        "anomalies": _guard("anomalies", lambda: anomaly_counts(run, predictions)),
        "reliability": rel,
        "precision": _guard(
            "precision", lambda: alert_precision(run, predictions, history, predictor_label)
        ),
        "risk": {
            "available": predictions is not None,
            "machines": predictions or {},
            "source": risk_label,
            "reason": "no failure model (ml/failure_model) and simulation, or gateway "
            "predictor alerts (cloud/anomaly-stream-records.jsonl), in this run",
        },
        "plan": _guard(
            "plan",
            lambda: maintenance_plan(
                predictions,
                rel,
                history["end_ms"],
                alert_threshold if alert_threshold is not None else _alert_threshold(run),
                risk_label,
            ),
        ),
        "data_path": _guard("data_path", lambda: data_path(run)),
        "cost": _guard("cost", cost_panel),
        "whatif": _guard("whatif", lambda: whatif_panel(run)),
    }


def _guard_history(run: Run) -> dict[str, Any]:
    try:
        return machine_history(run)
    except Exception as exc:
        log.warning("run history unreadable", extra={"error": repr(exc)})
        return {
            "machines": [],
            "failures": [],
            "maintenance": [],
            "start_ms": None,
            "end_ms": None,
            "manifest": {},
        }
