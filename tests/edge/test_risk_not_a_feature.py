"""The predictor's own output never becomes its input: `failure_probability` readings (the
catalog's derived series, stored by the SensorBuffer and landed in silver next to the sensors'
readings) leave the failure model's training set exactly as it was without them.

The training set is built by `ml_pipeline.dataset.build_table` from a run folder (a simulation,
or the lake's silver readings exported by `local_platform.connected.models.export_training_set`
with every metric in it); `reading_columns` keeps only the catalog's measured metrics.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iiot.catalog import MetricCatalog
from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation

FLEET = FleetConfig(
    factories=1,
    machines_per_factory=3,
    hours=30.0,
    interval_ms=120_000,
    seed=5,
    mtbf_hours=20.0,
    malformed_rate=0.0,
)


def with_predictions(run: Path, out: Path, metric: str) -> int:
    """A copy of `run` whose readings also hold a probability per machine every 5 minutes, 299 s
    into each bucket (the last row of most sampling buckets, so it would move them), with the
    most leaking value there is: 1.0 within a day before a failure, else 0.0."""
    shutil.copytree(run, out)
    readings = pq.read_table(out / "readings.parquet")
    with (out / "failures.csv").open() as handle:
        failed = [(row["machine_id"], int(row["failed_at_ms"])) for row in csv.DictReader(handle)]
    ts = readings.column("timestamp").cast(pa.int64()).to_numpy()
    start, end = int(ts.min()), int(ts.max())
    machines = sorted(set(readings.column("machine_id").to_pylist()))
    factory = readings.column("factory_id")[0].as_py()
    rows = []
    for machine in machines:
        for t in range(start - start % 300_000 + 299_000, end, 300_000):
            soon = any(m == machine and 0 <= f - t <= 86_400_000 for m, f in failed)
            rows.append((t, machine, 1.0 if soon else 0.0))
    extra = {
        "timestamp": pa.array([r[0] for r in rows], pa.int64()),
        "factory_id": [factory] * len(rows),
        "machine_id": [r[1] for r in rows],
        "sensor_id": ["failure_predictor"] * len(rows),
        "metric": [metric] * len(rows),
        "value": [r[2] for r in rows],
        "unit": ["probability"] * len(rows),
    }
    columns = {}
    for field in readings.schema:
        values = extra[field.name] if field.name in extra else [None] * len(rows)
        array = pa.array(values) if not isinstance(values, pa.Array) else values
        columns[field.name] = array.cast(field.type)
    added = pa.table(columns, schema=readings.schema)
    pq.write_table(pa.concat_tables([readings, added]), out / "readings.parquet")
    return len(rows)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, catalog: MetricCatalog) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("risk-feature")
    plain = base / "plain"
    write_simulation(FleetSimulator(FLEET, catalog), plain)
    (metric,) = catalog.derived
    assert with_predictions(plain, base / "with-risk", metric) > 500
    return plain, base / "with-risk"


def test_the_models_own_output_is_not_a_feature(runs, catalog: MetricCatalog) -> None:
    from ml_pipeline.dataset import build_table, reading_columns

    plain, with_risk = runs
    table = pq.read_table(with_risk / "readings.parquet")
    _, metric, _, _, valid = reading_columns(table, catalog)
    assert (metric == "failure_probability").sum() > 500
    assert not valid[metric == "failure_probability"].any()  # in range, yet not a reading

    before = build_table(plain, catalog=catalog)
    after = build_table(with_risk, catalog=catalog)
    assert not [name for name in after.names if "failure_probability" in name]
    assert after.names == before.names
    np.testing.assert_array_equal(after.timestamp, before.timestamp)
    np.testing.assert_array_equal(after.machine_id, before.machine_id)
    np.testing.assert_array_equal(after.x, before.x)
    np.testing.assert_array_equal(after.extra["label"], before.extra["label"])
