"""The maintenance system's feed: work orders and failures as data, into the lake and to the
gateways.

The simulated CMMS knows every maintenance job (preventive and corrective) and every failure
of the fleet. A record is sent once its job is completed in simulated time:

* to the lake: JSON lines under `lake/maintenance_landing/` (as an export job would land them),
  from which `build_tables` runs the lake's maintenance job (spark_jobs/maintenance.py):
  `silver/maintenance_records` and `silver/failures` (one row per job or failure id), the
  rejected lines with their reason, and `gold/machine_day_kpis` (availability, downtime, MTBF
  and MTTR per machine-day);
* to the factory's gateway: `factory/<id>/maintenance` with the machine and the completion
  time, which the FailurePredictor turns into its time-since-maintenance feature;
* to IoT Core on the same topic (`iiot/<env>/factory/<id>/maintenance` when deployed), where
  the maintenance rule writes it into the machine state table (`ingress.py`,
  `stacks/alerting_stack.py`): the alert router learns when a machine returned to service.

The training set (`models.export_training_set`) reads these silver tables beside silver
readings, so a model never sees a failure the maintenance system had not reported yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
    """silver/maintenance_records, silver/failures (and the rejects) and gold/machine_day_kpis
    from what landed, by the lake's own job (`spark_jobs.main --job maintenance` on Sail, the
    job EMR runs in the cloud); it rebuilds them whole (the CMMS tables are small)."""
    done = subprocess.run(  # noqa: S603 - our interpreter and the project's own job
        [sys.executable, "-m", "spark_jobs.main", "--job", "maintenance", "--engine", "sail",
         "--lake-root", str(plan.lake_dir)],
        capture_output=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"the lake's maintenance job failed (exit {done.returncode}): "
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )
    (figures,) = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return {
        "events": int(figures.get("lines", 0)),
        "maintenance_records": int(figures.get("maintenance_records", 0)),
        "failures": int(figures.get("failures", 0)),
        "rejected": int(figures.get("rejected", 0)),
        "machine_days": int(figures.get("machine_days", 0)),
    }


MAINTENANCE_TOPIC = "factory/{factory_id}/maintenance"


def topic(factory_id: str) -> str:
    """The completed jobs' topic of one factory (on its gateway's broker and on IoT Core)."""
    return MAINTENANCE_TOPIC.format(factory_id=factory_id)


def gateway_message(job: dict[str, Any]) -> bytes:
    """What the CMMS bridge says when a job is completed (to the gateway and to IoT Core): the
    machine and the completion time the predictor needs, and the job the maintenance rule
    records."""
    return json.dumps(
        {
            "factory_id": job["factory_id"],
            "machine_id": job["machine_id"],
            "completed_at_ms": int(job["completed_at_ms"]),
            "started_at_ms": int(job["started_at_ms"]),
            "maintenance_id": job["maintenance_id"],
            "kind": job["kind"],
        }
    ).encode()
