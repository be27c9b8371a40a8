"""The connected run's stream rules are calibrated on its lake: `models.calibrate_rules` runs
`iiot stream calibrate --silver` over the lake's silver history and renders the SQL the run's
Flink job is started with (`flink_job.py --sql-dir`; the whole run with it:
tests/connected/test_connected_run.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iiot.catalog import MetricCatalog
from kda_sql.calibration import Calibration
from local_platform.connected import late
from local_platform.connected.plan import Plan
from tests.connected.test_anomaly_detector import _write_silver

pytestmark = pytest.mark.slow


def test_the_rules_are_rendered_with_limits_learned_from_the_lake(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    from local_platform.connected import models

    plan = Plan(work_dir=tmp_path, factories=1, machines_per_factory=3, hours=1.0,
                history_hours=30, malformed_rate=0.0)  # fmt: skip
    plan.write()
    _write_silver(plan, catalog)
    figures = models.calibrate_rules(plan)
    assert figures["calibrated"]
    calibration = Calibration.load(Path(figures["limits"]))
    # every sensor series of the history, learned before the live start only (a derived
    # series, the predictor's failure_probability, has no rapid-change rule to calibrate)
    assert {s.key for s in calibration.series} == {
        f"F01/F01-M00{m}/{metric}" for m in (1, 2, 3) for metric in catalog.measured
    }
    assert calibration.settings["until_ms"] == plan.live_start_ms
    assert calibration.settings["source"] == str(plan.lake_dir / "silver")
    assert figures["series"] == len(calibration.series) == 15
    assert figures["windows_s"] == [60]  # 10 s sampling: the catalog's window holds 6 readings
    # the rendered rules carry each series' learned limit, not only the catalog's default
    sql_dir = Path(figures["sql_dir"])
    rapid = (sql_dir / "20_rapid_change_60s.sql").read_text()
    for series in calibration.series:
        assert f"'{series.key}', {series.stddev_limit!r}," in rapid
        # the late evaluation's reference copy (factory REF-<factory>) meets the same limit
        assert f"'REF-{series.key}', {series.stddev_limit!r}" in rapid
    # a lookup in one map (not a CASE branch per series), the catalog's limit when absent
    assert rapid.count("CAST(MAP[") == 1
    assert "WHEN 'F01/" not in rapid
    # the late evaluation's context covers the longest calibrated window
    assert late.context_ms(plan) == 60_000
    # the other statements are the catalog's (the same files as kda_sql/sql)
    shipped = Path(__file__).resolve().parents[2] / "kda_sql" / "sql"
    assert sorted(p.name for p in sql_dir.glob("*.sql")) == sorted(
        p.name for p in shipped.glob("*.sql")
    )
    assert json.loads(json.dumps(figures))  # recorded as is in reconciliation.json
