"""A small run directory with every input the report reads: a simulated fleet, a failure model
trained and compiled for this machine, a silver and gold lake (Delta), stream alerts, a
contract quarantine and a connected run's reconciliation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from iiot.catalog import MetricCatalog
from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation

FLEET = FleetConfig(
    factories=2,
    machines_per_factory=3,
    hours=48.0,
    interval_ms=60_000,
    seed=5,
    mtbf_hours=30.0,
    malformed_rate=0.0,
)


def _lake(simulation: Path, lake: Path) -> None:
    """silver.readings with the z-score flag, gold.machine_daily with its anomaly counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    table = pq.read_table(simulation / "readings.parquet")
    machine = table.column("machine_id").to_numpy(False).astype(str)
    metric = table.column("metric").to_numpy(False).astype(str)
    value = table.column("value").to_numpy()
    flag = np.zeros(len(value), dtype=bool)
    for key in set(zip(machine.tolist(), metric.tolist(), strict=True)):
        rows = (machine == key[0]) & (metric == key[1]) & (value > -900)
        mean, std = value[rows].mean(), value[rows].std() or 1.0
        flag[rows] = np.abs(value[rows] - mean) > 3 * std
    silver = pa.table(
        {
            "machine_id": machine,
            "timestamp": table.column("timestamp").cast(pa.int64()),
            "metric": metric,
            "value": value,
            "is_anomaly": flag,
        }
    )
    write_deltalake(str(lake / "silver" / "readings"), silver)
    machines = sorted(set(machine.tolist()))
    gold = pa.table(
        {
            "machine_id": machines,
            "anomaly_count": [int(flag[machine == m].sum()) for m in machines],
        }
    )
    write_deltalake(str(lake / "gold" / "machine_daily"), gold)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory: pytest.TempPathFactory, catalog: MetricCatalog) -> Path:
    from ml_pipeline.compile import compile_model
    from ml_pipeline.dataset import build_table
    from ml_pipeline.train import train_and_evaluate

    run = tmp_path_factory.mktemp("report-run")
    simulation = run / "simulation"
    write_simulation(FleetSimulator(FLEET, catalog), simulation)
    table = build_table(simulation, catalog=catalog, sample_ms=10 * 60_000)
    train_and_evaluate(table, run / "ml" / "model", rounds=20, version="report-test")
    compile_model(run / "ml" / "model", run / "ml" / "failure_model", ("x86_64",))
    _lake(simulation, run / "lake")
    (run / "stream").mkdir()
    (run / "stream" / "alerts.txt").write_text(
        "Subject: [WARNING] F01/F01-M001: vibration high\nWARNING: THRESHOLD on machine "
        "F01-M001\n\nFactory:    F01\nMachine:    F01-M001\nMetric:     vibration\n"
        "Time:       2026-01-05 03:00:00.000 UTC\n\n"
    )
    (run / "quarantine.jsonl").write_text(
        '{"bad": 1}\tunit: expected degC\n{"x"\tpayload: not JSON\n'
    )
    (run / "reconciliation.json").write_text(
        json.dumps(
            {  # the shape local_platform/connected/reconcile.py writes
                "ok": True,
                "failed": [],
                "checks": [
                    {
                        "check": "published = silver + quarantined",
                        "left": 1000,
                        "right": 1000,
                        "ok": True,
                    },
                ],
                "quarantined": {"unit": 10},
            }
        )
    )
    (run / "faults.json").write_text(json.dumps([{"fault": "uplink down", "factory": "F01"}]))
    # The what-if's figures in the shape local_platform/report/whatif.py writes, so that the
    # browser draws its panel whatever order the tests run in (test_whatif.py computes real
    # ones and replaces this file).
    arm = {"failures": 0, "unplanned_h": 0.0, "planned_h": 0.0, "downtime_h": 0.0}
    (run / "whatif").mkdir()
    (run / "whatif" / "whatif.json").write_text(
        json.dumps(
            {
                "fleet": "2 factories x 3 machines (fixture)",
                "run_to_failure": {
                    **arm,
                    "failures": 4,
                    "unplanned_h": 20.0,
                    "downtime_h": 20.0,
                    "planned_jobs": 0,
                    "averted": 0,
                    "false_alarm_jobs": 0,
                },
                "predictive": {
                    **arm,
                    "failures": 2,
                    "unplanned_h": 10.0,
                    "planned_h": 4.0,
                    "downtime_h": 14.0,
                    "planned_jobs": 3,
                    "averted": 2,
                    "false_alarm_jobs": 1,
                },
                "unplanned_reduction": 0.5,
                "downtime_reduction": 0.3,
                "ceiling_reduction": 0.55,
            }
        )
    )
    return run
