"""What a connected run (local_platform/connected, `make demo`) leaves for the report.

A connected run keeps no simulation files. Its fleet is in `gateways/<factory>/machines.json`
and `plan.json`; its failures and maintenance jobs in the lake's `silver/failures` and
`silver/maintenance_records` (what the simulated CMMS reported, local_platform/connected/
maintenance.py), completed by the CMMS's own schedule regenerated from `plan.json` (same seed,
same schedule) for the jobs the lake had not been sent yet when the run ended; the failure
predictions are the gateways' predictors' FAILURE_PREDICTED alerts on the anomaly stream
(`cloud/anomaly-stream-records.jsonl`) and, for the risk over time, the failure_probability
series the gateways stored (silver readings, `with_stored_risk`); the quarantine is each
gateway's SensorBuffer table (`gateways/<factory>/sensor_buffer/sensor_buffer.sqlite3`), or the
reconciliation's counts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000


def is_connected(root: Path) -> bool:
    return (root / "plan.json").is_file() or (root / "gateways").is_dir()


def _plan(root: Path) -> Any | None:
    """The run's plan (local_platform.connected.plan.Plan), its paths under `root`."""
    path = root / "plan.json"
    if not path.is_file():
        return None
    from local_platform.connected.plan import Plan

    document = json.loads(path.read_text())
    document["work_dir"] = str(root)  # the run directory may have moved since
    return Plan.from_json(document)


def _silver(root: Path, name: str) -> list[dict[str, Any]]:
    path = root / "lake" / "silver" / name
    if not (path / "_delta_log").is_dir():
        return []
    from deltalake import DeltaTable

    return list(DeltaTable(str(path)).to_pyarrow_table().to_pylist())


def _machines(root: Path) -> list[dict[str, str]]:
    machines = []
    for path in sorted((root / "gateways").glob("*/machines.json")):
        factory = path.parent.name
        for machine_id, config in sorted(json.loads(path.read_text()).items()):
            machines.append(
                {
                    "machine_id": machine_id,
                    "factory_id": factory,
                    "model": str(config.get("model", "")),
                    "installed_on": str(config.get("installedOn", "")),
                }
            )
    return machines


def connected_history(root: Path) -> dict[str, Any] | None:
    """Machines, failures, maintenance jobs and span of a connected run, in the shape
    run_data.machine_history gives (values as the simulation's CSV strings); None when `root`
    is not a connected run."""
    if not is_connected(root):
        return None
    plan = _plan(root)
    machines = _machines(root)
    lake_failures = _silver(root, "failures")
    lake_jobs = _silver(root, "maintenance_records")
    failures = {str(f["failure_id"]): f for f in lake_failures}
    jobs = {str(j["maintenance_id"]): j for j in lake_jobs}
    scheduled = 0
    start = end = live_start = None
    if plan is not None:
        from local_platform.connected.maintenance import schedule

        start = plan.live_start_ms - plan.history_hours * HOUR_MS
        live_start, end = plan.live_start_ms, plan.live_end_ms
        all_jobs, all_failures, simulated = schedule(plan)
        if not machines:
            machines = [
                {
                    "machine_id": m.machine_id,
                    "factory_id": m.factory_id,
                    "model": m.model,
                    "installed_on": m.installed_on,
                }
                for m in simulated
            ]
        # the CMMS sends a record once its job is completed: the rest of the span's are in
        # its schedule, not (yet) in the lake
        for failure in all_failures:
            if failure["failed_at_ms"] < end and failure["failure_id"] not in failures:
                failures[failure["failure_id"]] = failure
                scheduled += 1
        for job in all_jobs:
            if job["started_at_ms"] < end and job["maintenance_id"] not in jobs:
                jobs[job["maintenance_id"]] = job
                scheduled += 1
    if not machines and not failures:
        return None
    if not machines:
        seen = {(f["factory_id"], f["machine_id"]) for f in [*failures.values(), *jobs.values()]}
        machines = [
            {"machine_id": m, "factory_id": f, "model": "", "installed_on": ""}
            for f, m in sorted(seen)
        ]
    reconciliation = _json(root / "reconciliation.json") or {}
    readings = reconciliation.get("readings", {})
    silver = readings.get("silver", {})
    in_lake = (
        silver.get("rows", 0) + silver.get("history_rows", 0)
        if silver
        else readings.get("published")
    )
    manifest = {
        "readings": in_lake,
        "malformed_json_lines": readings.get("malformed_payloads", {}),
        "config": {"seed": plan.seed} if plan is not None else {},
        "start_ms": start,
        "end_ms": end,
    }
    return {
        "machines": machines,
        "failures": [_strings(f) for f in failures.values()],
        "maintenance": [_strings(j) for j in jobs.values()],
        "start_ms": start,
        "end_ms": end,
        "predicted_from_ms": live_start,  # the gateways' predictors run in the live hours only
        "manifest": manifest,
        "source": "lake/silver/failures, maintenance_records "
        f"({len(lake_failures)} failures, {len(lake_jobs)} jobs reported to the lake)"
        + (
            f" + {scheduled} record(s) of the CMMS schedule (plan.json's seed) not in the lake"
            if scheduled
            else ""
        )
        + (", plan.json (span)" if plan is not None else ""),
    }


def _strings(record: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in record.items()}


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def anomaly_records(root: Path) -> list[dict[str, Any]]:
    """Every anomaly on the cloud's anomaly stream (what the alert router handled)."""
    path = root / "cloud" / "anomaly-stream-records.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            data = record.get("data", record)
            out.append(json.loads(data) if isinstance(data, str) else data)
        except ValueError:
            continue
    return out


def _risk_entry(factory_id: str) -> dict[str, Any]:
    """One machine's risk as the report's risk panels take it: times and probabilities over
    time, the latest probability (None: none seen) and its alerts (RAISED times)."""
    return {"factory_id": factory_id, "times": [], "probabilities": [], "last": None, "alerts": []}


def gateway_predictions(
    root: Path, machines: list[dict[str, str]], iso: Any
) -> tuple[dict[str, Any] | None, float | None]:
    """Per machine the gateways' predictors' FAILURE_PREDICTED states over time (RAISED and
    CLEARED, with the probability each carried), its alerts (RAISED times) and the latest
    probability seen (None: no alert, below the threshold throughout); and the alert threshold
    the predictors used. (None, None) when the run has no predictor alerts."""
    events = [
        a
        for a in anomaly_records(root)
        if a.get("anomaly_type") == "FAILURE_PREDICTED" and a.get("machine_id")
    ]
    if not events:
        return None, None
    events.sort(key=lambda a: int(a.get("timestamp", 0)))
    out: dict[str, Any] = {m["machine_id"]: _risk_entry(m["factory_id"]) for m in machines}
    threshold = None
    for event in events:
        machine = out.setdefault(event["machine_id"], _risk_entry(event.get("factory_id", "")))
        t = int(event["timestamp"])
        value = event.get("value")
        if isinstance(value, int | float):
            machine["times"].append(iso(t))
            machine["probabilities"].append(round(float(value), 4))
            machine["last"] = float(value)
        if event.get("state") == "RAISED":
            machine["alerts"].append(t)
        # a RAISED alert carries the alert threshold, a CLEARED one the clear threshold
        if event.get("state") == "RAISED" and isinstance(event.get("threshold"), int | float):
            threshold = float(event["threshold"])
    return out, threshold


def gateway_quarantine(root: Path) -> dict[str, dict[str, int]]:
    """Each gateway's quarantined readings by reason (the contract's field), from its
    SensorBuffer database; a gateway whose database is unreadable is left out."""
    out: dict[str, dict[str, int]] = {}
    for database in sorted((root / "gateways").glob("*/sensor_buffer/sensor_buffer.sqlite3")):
        factory = database.parent.parent.name
        try:
            db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
            try:
                reasons: Counter[str] = Counter(
                    (reason.split(":")[0].strip() or "unknown")
                    for (reason,) in db.execute("SELECT reason FROM quarantine")
                )
            finally:
                db.close()
        except sqlite3.Error as exc:
            log.warning("gateway database unreadable", extra={"path": str(database), "error": exc})
            continue
        out[factory] = dict(reasons.most_common())
    return out


def with_stored_risk(
    predictions: dict[str, Any] | None,
    machines: list[dict[str, str]],
    stored: dict[str, Any],
    iso: Any,
    points: int = 300,
) -> dict[str, Any]:
    """`predictions` (`gateway_predictions`, or None) with each machine's risk over time and
    latest probability taken from the failure_probability series its gateway stored (every
    prediction the SensorBuffer's deadband let through, uploaded like a reading), at most
    `points` a machine; the alerts stay the anomaly stream's. An alert carries a probability
    only when it crosses a threshold, so without the stored series a machine below the
    threshold throughout has no risk at all."""
    import numpy as np

    out = predictions if predictions is not None else {}
    factory_of = {m["machine_id"]: m["factory_id"] for m in machines}
    machine, timestamp, value = stored["machine"], stored["timestamp"], stored["value"]
    order = np.lexsort((timestamp, machine))
    machine, timestamp, value = machine[order], timestamp[order], value[order]
    names, starts = np.unique(machine, return_index=True)
    ends = [*starts[1:], len(machine)]
    for name, begin, end in zip(names.tolist(), starts.tolist(), ends, strict=True):
        entry = out.setdefault(name, _risk_entry(factory_of.get(name, "")))
        step = max((end - begin) // points, 1)
        picked = list(range(begin, end, step))
        if picked[-1] != end - 1:
            picked.append(end - 1)  # the latest always
        entry["times"] = [iso(int(t)) for t in timestamp[picked]]
        entry["probabilities"] = [round(float(v), 4) for v in value[picked]]
        entry["last"] = float(value[end - 1])
    return out
