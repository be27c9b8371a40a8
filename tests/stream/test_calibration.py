"""Calibrated rapid-change rules: limits learned per series from normal operation, windows that
widen for slow sampling, rendered into the Flink SQL and applied by the real job."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from iiot.anomaly import decode_anomaly
from iiot.catalog import MetricCatalog
from kda_sql.calibration import (
    Calibration,
    SeriesLimit,
    learn_from_run,
    learn_limits,
    window_for,
    window_stddevs,
)
from kda_sql.cli import app
from kda_sql.generate import render, stale_files

from .scenarios import T0_MS, Row, Streams


def brute_force_stddevs(t_ms, values, window_ms, slide_ms):  # type: ignore[no-untyped-def]
    out = []
    start = (min(t_ms) - window_ms) // slide_ms * slide_ms
    while start <= max(t_ms):
        inside = [v for t, v in zip(t_ms, values, strict=True) if start <= t < start + window_ms]
        if len(inside) >= 2:
            out.append(float(np.std(inside, ddof=1)))
        start += slide_ms
    return out


def test_window_stddevs_are_the_hop_windows_flink_forms():
    rng = np.random.default_rng(0)
    t = np.sort(rng.choice(np.arange(0, 600_000, 1000), 200, replace=False)) + T0_MS
    v = 1480.0 + rng.normal(0, 2.0, len(t))  # a large level: the sums must not cancel
    got = window_stddevs(t, v, 60_000, 10_000)
    want = brute_force_stddevs(t.tolist(), v.tolist(), 60_000, 10_000)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def brute_force_judged(t_ms, values, window_ms, slide_ms):  # type: ignore[no-untyped-def]
    """What the rule judges: per window of at least 3 readings, the smaller of its standard
    deviation and its standard deviation without its reading farthest from its mean."""
    out = []
    start = (min(t_ms) - window_ms) // slide_ms * slide_ms
    while start <= max(t_ms):
        inside = [v for t, v in zip(t_ms, values, strict=True) if start <= t < start + window_ms]
        if len(inside) >= 3:
            mean = float(np.mean(inside))
            farthest = max(range(len(inside)), key=lambda i: abs(inside[i] - mean))
            rest = inside[:farthest] + inside[farthest + 1 :]
            out.append(min(float(np.std(inside, ddof=1)), float(np.std(rest, ddof=1))))
        start += slide_ms
    return out


def test_the_rule_judges_each_window_without_its_farthest_reading():
    rng = np.random.default_rng(1)
    t = np.sort(rng.choice(np.arange(0, 900_000, 1000), 150, replace=False)) + T0_MS
    v = 1480.0 + rng.normal(0, 2.0, len(t))
    v[40] *= 2.0  # a spike: one reading
    got = window_stddevs(t, v, 60_000, 10_000, without_farthest=True)
    want = brute_force_judged(t.tolist(), v.tolist(), 60_000, 10_000)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    # the spike dominates the plain standard deviation of its windows, not the judged one
    assert window_stddevs(t, v, 60_000, 10_000).max() > 100
    assert got.max() < 10


def test_the_window_widens_for_slow_sampling_in_multiples_of_the_catalog_window():
    assert window_for(10_000, 60) == 60  # 6 readings in 60 s
    assert window_for(1_000, 60) == 60  # fast sampling keeps the catalog window
    assert window_for(60_000, 60) == 360  # a reading a minute: 6 minutes
    assert window_for(15_000, 60) == 120
    assert window_for(15_000, 60, min_readings=4) == 60


def normal(seconds: int, every_s: int, level: float, noise: float, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    t = T0_MS + np.arange(0, seconds, every_s, dtype=np.int64) * 1000
    return t, level + rng.normal(0, noise, len(t))


def test_limits_are_learned_per_series_from_normal_operation(catalog: MetricCatalog):
    quiet_t, quiet_v = normal(6 * 3600, 10, 65.0, 0.2)
    noisy_t, noisy_v = normal(6 * 3600, 10, 65.0, 2.0, seed=1)
    slow_t, slow_v = normal(24 * 3600, 60, 40.0, 0.2, seed=2)
    flat_t = quiet_t
    flat_v = np.full(len(flat_t), 3.0)
    calibration = learn_limits(
        [
            ("F1", "M-QUIET", "temperature", quiet_t, quiet_v),
            ("F1", "M-NOISY", "temperature", noisy_t, noisy_v),
            ("F1", "M-SLOW", "temperature", slow_t, slow_v),
            ("F1", "M-FLAT", "vibration", flat_t, flat_v),
            ("F1", "M-QUIET", "not_in_catalog", quiet_t, quiet_v),
        ],
        catalog,
    )
    by = {(s.machine_id, s.metric): s for s in calibration.series}
    assert set(by) == {
        ("M-QUIET", "temperature"),
        ("M-NOISY", "temperature"),
        ("M-SLOW", "temperature"),
        ("M-FLAT", "vibration"),
    }
    quiet, noisy = by[("M-QUIET", "temperature")], by[("M-NOISY", "temperature")]
    # the largest normal window, with margin: near 0.2 x 1.5 x a little
    assert 0.3 < quiet.stddev_limit < 1.0
    assert 8 < noisy.stddev_limit / quiet.stddev_limit < 12  # ten times the noise
    assert quiet.stddev_limit < catalog["temperature"].rapid_change.stddev_limit / 20
    assert (quiet.interval_ms, quiet.window_seconds) == (10_000, 60)
    slow = by[("M-SLOW", "temperature")]
    assert (slow.interval_ms, slow.window_seconds) == (60_000, 360)
    # a flat series: never below two resolution steps
    assert by[("M-FLAT", "vibration")].stddev_limit == 2 * catalog["vibration"].resolution
    assert calibration.settings["catalog_digest"] == catalog.digest


def test_calibration_round_trips_and_a_broken_file_is_named(tmp_path: Path):
    calibration = Calibration(
        (SeriesLimit("F1", "M1", "temperature", 10_000, 60, 0.5, 100),), {"quantile": 0.999}
    )
    path = calibration.save(tmp_path / "limits.json")
    assert Calibration.load(path) == calibration
    (tmp_path / "bad.json").write_text(json.dumps({"version": 1, "series": [{"metric": "x"}]}))
    with pytest.raises(ValueError, match=r"bad\.json: a series entry is incomplete"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"version": 0, "series": []}))
    with pytest.raises(ValueError, match="version 1 expected"):
        Calibration.load(tmp_path / "old.json")
    with pytest.raises(ValueError, match=r"missing\.json: not a rapid-change calibration"):
        Calibration.load(tmp_path / "missing.json")


CALIBRATION = Calibration(
    (
        SeriesLimit("F1", "M-QUIET", "temperature", 5_000, 60, 1.0, 500),
        SeriesLimit("F1", "M-QUIET", "vibration", 5_000, 60, 50.0, 500),
        SeriesLimit("F1", "M-SLOW", "temperature", 60_000, 360, 2.0, 500),
        SeriesLimit("F1", "M-SPIKE", "temperature", 5_000, 60, 1.0, 500),
    )
)


def test_render_puts_learned_limits_and_windows_into_the_sql(catalog: MetricCatalog):
    sql = render(catalog, CALIBRATION)
    assert sorted(n for n in sql if "rapid" in n) == [
        "20_rapid_change_60s.sql",
        "21_rapid_change_360s.sql",
    ]
    one_minute, six_minutes = sql["20_rapid_change_60s.sql"], sql["21_rapid_change_360s.sql"]
    # the limits are a lookup (a literal map keyed by factory/machine/metric), not a CASE branch
    # per series: the generated code does not grow with the number of series
    assert "'F1/M-QUIET/temperature', 1.0," in one_minute
    assert (
        "] AS MAP<STRING, DOUBLE>)[factory_id || '/' || machine_id || '/' || metric]" in one_minute
    )
    assert "WHEN 'F1/M-QUIET" not in one_minute
    assert one_minute.count("CAST(MAP[") == 2  # this window's limits, the other window's series
    # the slow series belongs to the 6-minute query only (NULL, never fires, in the 1-minute
    # one); uncalibrated series keep the catalog's limit
    assert "'F1/M-SLOW/temperature', 360\n        ] AS MAP<STRING, INT>)" in one_minute
    assert "THEN CAST(NULL AS DOUBLE)" in one_minute
    assert "WHEN 'temperature' THEN 20.0" in one_minute
    assert "INTERVAL '360' SECOND(3)" in six_minutes
    assert "'F1/M-SLOW/temperature', 2.0\n" in six_minutes
    assert "CASE metric" not in six_minutes  # no catalog default has a 6-minute window
    assert "COALESCE(" in one_minute
    assert "WHERE metric IN ('temperature')" in six_minutes
    # without a calibration the checked-in SQL is what renders
    assert stale_files(catalog) == []


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, catalog: MetricCatalog) -> Path:
    """A small simulated fleet read once a minute (the 60 s windows widen to 6 minutes)."""
    from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation

    out = tmp_path_factory.mktemp("calibration-run")
    fleet = FleetConfig(
        factories=1, machines_per_factory=3, hours=24.0, interval_ms=60_000, seed=5,
        malformed_rate=0.0,
    )  # fmt: skip
    write_simulation(FleetSimulator(fleet, catalog), out)
    return out


def test_cli_calibrates_from_a_run_and_renders(run_dir: Path, tmp_path: Path, catalog):  # type: ignore[no-untyped-def]
    cli = CliRunner()
    out = tmp_path / "limits.json"
    result = cli.invoke(app, ["calibrate", "--data", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    calibration = Calibration.load(out)
    direct = learn_from_run(run_dir, catalog)
    assert calibration.series == direct.series
    assert {(s.machine_id, s.metric) for s in calibration.series} == {
        (f"F01-M00{m}", name)
        for m in (1, 2, 3)
        for name, metric in catalog.items()
        if metric.rapid_change is not None  # a derived series (no rule) is not calibrated
    }
    assert {(s.interval_ms, s.window_seconds) for s in calibration.series} == {(60_000, 360)}
    result = cli.invoke(app, ["render", "--calibration", str(out), "--out", str(tmp_path / "sql")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sql" / "21_rapid_change_360s.sql").exists()
    # the checked-in folder holds the catalog's rendering only
    result = cli.invoke(app, ["render", "--calibration", str(out)])
    assert result.exit_code == 1
    assert "pass --out" in " ".join(result.output.split())


def calibrated_streams() -> Streams:
    """M-QUIET: temperature wiggles by 0.5 at 5 s and steps up by 5 degC at 60 s (catalog limit
    20 never fires; the learned 1.0 does). M-SLOW: a reading a minute, +10 degC at minute 12
    (one reading per 60 s window: only its 6-minute window sees the step). M-UNCAL: no
    calibration, the catalog's 20 applies to a 40 -> 90 step as before."""
    streams = Streams()
    for second in range(0, 120, 5):
        wiggle = 0.5 if second % 10 else -0.5
        step = 5.0 if second >= 60 else 0.0
        streams.rows.append(Row(second, "M-QUIET", "temperature", 65.0 + wiggle + step))
        streams.rows.append(Row(second, "M-QUIET", "vibration", 3.0 + wiggle))
        streams.rows.append(Row(second, "M-UNCAL", "temperature", 40.0 if second < 60 else 90.0))
    for minute in range(24):
        streams.rows.append(Row(minute * 60, "M-SLOW", "temperature", 40.0 + 10 * (minute >= 12)))
    # M-SPIKE: the quiet wiggle, and one reading of 90 at 60 s (a sensor's glitch, below the
    # severity rule's 100): its windows' standard deviation (about 7) is far above the learned
    # 1.0, but not without that reading
    for second in range(0, 120, 5):
        wiggle = 0.5 if second % 10 else -0.5
        spike = 25.0 if second == 60 else 0.0
        streams.rows.append(Row(second, "M-SPIKE", "temperature", 65.0 + wiggle + spike))
    return streams


def hop_expected(rows: list[Row], window_s: int, limit: float) -> list[tuple[int, float]]:
    """(newest reading's second, stddev) of every HOP window (slide 10 s) of at least 3 readings
    whose standard deviation is above `limit` with and without its reading farthest from its
    mean."""
    t = np.array([int(r.second * 1000) for r in rows])
    v = np.array([r.value for r in rows])
    found = []
    start = (t.min() - window_s * 1000) // 10_000 * 10_000
    while start <= t.max():
        inside = v[(t >= start) & (t < start + window_s * 1000)]
        if len(inside) >= 3:
            stddev = float(np.std(inside, ddof=1))
            rest = np.delete(inside, int(np.argmax(np.abs(inside - inside.mean()))))
            if stddev > limit and float(np.std(rest, ddof=1)) > limit:
                last = int(t[(t >= start) & (t < start + window_s * 1000)].max())
                found.append((last, round(stddev, 6)))
        start += 10_000
    return sorted(found)


@pytest.mark.slow
def test_the_flink_job_applies_learned_limits_and_scaled_windows(
    flink_python: Path, tmp_path: Path, catalog: MetricCatalog
):
    from kda_sql.flink_env import run_rules
    from kda_sql.generate import write_rendered

    streams = calibrated_streams()
    source = tmp_path / "readings.jsonl"
    source.write_bytes(b"\n".join(streams.lines()) + b"\n")
    sql_dir = tmp_path / "sql"
    write_rendered(catalog, sql_dir, CALIBRATION)
    run = run_rules(source, tmp_path / "anomalies", sql_dir=sql_dir)
    got: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    limits = {}
    for line in run.output_lines:
        a = decode_anomaly(line)
        assert a.anomaly_type == "RAPID_CHANGE"
        got[(a.machine_id, a.metric)].append((a.timestamp - T0_MS, round(a.value, 6)))
        limits[(a.machine_id, a.metric)] = a.threshold

    def rows(machine: str, metric: str) -> list[Row]:
        return [r for r in streams.rows if (r.machine_id, r.metric) == (machine, metric)]

    quiet = hop_expected(rows("M-QUIET", "temperature"), 60, 1.0)
    slow = hop_expected(rows("M-SLOW", "temperature"), 360, 2.0)
    uncal = hop_expected(rows("M-UNCAL", "temperature"), 60, 20.0)
    assert quiet
    assert slow
    assert uncal
    assert sorted(got[("M-QUIET", "temperature")]) == quiet
    assert sorted(got[("M-SLOW", "temperature")]) == slow
    assert sorted(got[("M-UNCAL", "temperature")]) == uncal
    assert set(got) == {("M-QUIET", "temperature"), ("M-SLOW", "temperature"),
                        ("M-UNCAL", "temperature")}  # fmt: skip
    assert limits == {
        ("M-QUIET", "temperature"): 1.0,
        ("M-SLOW", "temperature"): 2.0,
        ("M-UNCAL", "temperature"): 20.0,
    }
    # the glitch raised nothing, though its windows' standard deviation was far above the limit
    spike = rows("M-SPIKE", "temperature")
    assert hop_expected(spike, 60, 1.0) == []
    assert np.std([r.value for r in spike if 10 <= r.second < 70], ddof=1) > 5
    # the catalog's rules alone see none of the quiet or slow steps
    assert hop_expected(rows("M-QUIET", "temperature"), 60, 20.0) == []
    assert hop_expected(rows("M-SLOW", "temperature"), 60, 20.0) == []


def test_cli_calibrates_from_the_lakes_silver_tables(run_dir: Path, tmp_path: Path, catalog):  # type: ignore[no-untyped-def]
    """`--silver` reads the lake's Delta tables (readings with int64 ms timestamps, failures,
    maintenance_records) and learns what the same rows learn as a run directory."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    readings = pq.read_table(run_dir / "readings.parquet")
    readings = readings.set_column(
        readings.schema.get_field_index("timestamp"),
        "timestamp",
        readings.column("timestamp").cast(pa.int64()),
    )
    silver = tmp_path / "silver"
    write_deltalake(str(silver / "readings"), readings)
    for name, columns in (
        ("failures", ("failed_at_ms", "repaired_at_ms")),
        ("maintenance_records", ("started_at_ms", "completed_at_ms")),
    ):
        with (run_dir / f"{name}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            table = pa.table(
                {
                    "machine_id": [r["machine_id"] for r in rows],
                    **{c: pa.array([int(r[c]) for r in rows], pa.int64()) for c in columns},
                }
            )
            write_deltalake(str(silver / name), table)
    out = tmp_path / "limits.json"
    result = CliRunner().invoke(app, ["calibrate", "--silver", str(silver), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert Calibration.load(out).series == learn_from_run(run_dir, catalog).series
    # --until-ms: only the readings before it (fewer windows per series)
    half = int(readings.column("timestamp").to_numpy().min()) + 12 * 3_600_000
    early = tmp_path / "early.json"
    result = CliRunner().invoke(
        app,
        ["calibrate", "--silver", str(silver), "--until-ms", str(half), "--out", str(early)],
    )
    assert result.exit_code == 0, result.output
    whole = {s.key: s.windows for s in Calibration.load(out).series}
    before = {s.key: s.windows for s in Calibration.load(early).series}
    assert before
    assert set(before) <= set(whole)  # a machine may hold no normal half-day
    assert all(before[k] < whole[k] for k in before)
    # one source, not both, not none
    both = CliRunner().invoke(
        app, ["calibrate", "--silver", str(silver), "--data", str(run_dir), "--out", str(out)]
    )
    assert both.exit_code == 2
    assert CliRunner().invoke(app, ["calibrate", "--out", str(out)]).exit_code == 2
