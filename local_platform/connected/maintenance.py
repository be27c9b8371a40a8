"""The maintenance system's feed: work orders and failures as data, into the lake and to the
gateways.

The simulated CMMS knows every maintenance job (preventive and corrective) and every failure
of the fleet. A record is sent once its job is completed in simulated time:

* to the lake: JSON lines under `lake/maintenance_landing/` (as an export job would land them),
  from which `build_tables` makes `bronze/maintenance_events` (every record as it arrived, with
  its arrival time) and `silver/maintenance_records` and `silver/failures` (one row per job or
  failure id) with delta-rs;
* to the factory's gateway: `factory/<id>/maintenance` with the machine and the completion
  time, which the FailurePredictor turns into its time-since-maintenance feature.

The training set (`models.export_training_set`) reads these silver tables beside silver
readings, so a model never sees a failure the maintenance system had not reported yet.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from iiot.catalog import load_catalog
from local_platform.connected.plan import Plan
from local_platform.simulator import FleetSimulator


def schedule(plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Any]]:
    """(maintenance jobs, failures, machines) of the whole simulated span."""
    simulator = FleetSimulator(plan.fleet, load_catalog())
    jobs = [asdict(m) for m in simulator.maintenance]
    failures = [asdict(f) for f in simulator.failures]
    return jobs, failures, simulator.machines


def completed(
    records: list[dict[str, Any]], key: str, after: int, until: int
) -> list[dict[str, Any]]:
    return [r for r in records if after < int(r[key]) <= until]


def land(plan: Plan, jobs: list[dict[str, Any]], failures: list[dict[str, Any]]) -> Path | None:
    """One landed file of CMMS records (write, then rename: never half a file)."""
    if not jobs and not failures:
        return None
    folder = plan.lake_dir / "maintenance_landing"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"record_type": "maintenance", **j}) for j in jobs]
    lines += [json.dumps({"record_type": "failure", **f}) for f in failures]
    name = f"cmms-{time.time():.6f}-{uuid.uuid4().hex[:8]}.jsonl"
    partial = folder / f".{name}.partial"
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(folder / name)
    return folder / name


def build_tables(plan: Plan) -> dict[str, int]:
    """bronze/maintenance_events, silver/maintenance_records and silver/failures from what
    landed (rebuilt whole: the CMMS tables are small)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    folder = plan.lake_dir / "maintenance_landing"
    events: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        arrived = int(path.stat().st_mtime * 1000)
        for line in path.read_text().splitlines():
            if line.strip():
                events.append({"source_file": path.name, "arrived_ms": arrived, "raw": line})
    if not events:
        return {"events": 0, "maintenance_records": 0, "failures": 0}
    write_deltalake(
        str(plan.lake_dir / "bronze" / "maintenance_events"),
        pa.Table.from_pylist(events),
        mode="overwrite",
    )
    jobs: dict[str, dict[str, Any]] = {}
    failures: dict[str, dict[str, Any]] = {}
    for event in events:
        record = json.loads(event["raw"])
        kind = record.pop("record_type")
        if kind == "maintenance":
            jobs.setdefault(record["maintenance_id"], record)
        else:
            failures.setdefault(record["failure_id"], record)
    for name, rows in (("maintenance_records", jobs), ("failures", failures)):
        if rows:
            write_deltalake(
                str(plan.lake_dir / "silver" / name),
                pa.Table.from_pylist(list(rows.values())),
                mode="overwrite",
            )
    return {"events": len(events), "maintenance_records": len(jobs), "failures": len(failures)}


def gateway_message(job: dict[str, Any]) -> bytes:
    """What the CMMS bridge tells a gateway when a job is completed."""
    return json.dumps(
        {"machine_id": job["machine_id"], "completed_at_ms": int(job["completed_at_ms"])}
    ).encode()
