import csv
import json
from datetime import UTC, datetime

import numpy as np
import pyarrow.parquet as pq
import pytest

from iiot.contract import Validator
from iiot.wire import validate_json
from local_platform.simulator import (
    HOUR_MS,
    SENSOR_FAULT_CODE,
    FleetConfig,
    FleetSimulator,
    write_simulation,
)


def simulate(catalog, **changes):
    config = FleetConfig(
        **{"factories": 1, "machines_per_factory": 4, "hours": 6, "seed": 3, **changes}
    )
    return FleetSimulator(config, catalog)


def all_readings(simulator):
    from iiot.contract import ReadingColumns

    return ReadingColumns.concat(list(simulator.chunks()))


def one_series(simulator, columns, machine_id: str, metric: str):
    """The timestamps and values of one machine's metric in `columns`."""
    index = next(
        i
        for i, key in enumerate(simulator.series)
        if key.machine_id == machine_id and key.metric == metric
    )
    rows = columns.series_index == index
    return columns.timestamp[rows], columns.value[rows]


def test_same_seed_same_output_different_seed_different_output(catalog):
    first, again = all_readings(simulate(catalog)), all_readings(simulate(catalog))
    other = all_readings(simulate(catalog, seed=4))
    assert np.array_equal(first.value, again.value)
    assert np.array_equal(first.timestamp, again.timestamp)
    assert not np.array_equal(first.value[:1000], other.value[:1000])


def test_fleet_shape_ids_units_and_interval(catalog):
    sim = simulate(catalog, factories=2, machines_per_factory=3, interval_ms=5000)
    columns = all_readings(sim)
    assert len(sim.series) == 2 * 3 * 5
    assert {key.factory_id for key in sim.series} == {"F01", "F02"}
    assert all(key.unit == catalog[key.metric].unit for key in sim.series)
    assert all(key.sensor_id.startswith(key.machine_id) for key in sim.series)
    first_series = columns.timestamp[columns.series_index == 0]
    assert set(np.diff(first_series)) <= {5000} | {
        5000 * k for k in range(2, 400)
    }  # gaps = dropouts
    assert len(columns) <= sim.config.expected_readings


def test_values_are_at_catalog_resolution_and_mostly_valid(catalog):
    sim = simulate(catalog, hours=12)
    columns = all_readings(sim)
    validator = Validator(catalog, clock=lambda: 2e9)
    outcome = validator.validate_columns(columns)
    assert len(outcome.rejects) < 0.001 * len(columns)  # spikes and fault codes only
    for position in range(0, len(columns), 997):
        metric = sim.series[columns.series_index[position]].metric
        decimals = catalog[metric].decimals
        assert round(columns.value[position], decimals) == columns.value[position]
    assert (columns.value == SENSOR_FAULT_CODE).sum() < 0.001 * len(columns)


def test_shift_pattern_shows_in_rpm(catalog):
    sim = simulate(catalog, hours=24, mtbf_hours=10_000, machines_per_factory=6)
    columns = all_readings(sim)
    rpm = np.array([key.metric == "rpm" for key in sim.series])[columns.series_index]
    hour = (columns.timestamp % (24 * HOUR_MS)) // HOUR_MS
    day = columns.value[rpm & (hour >= 8) & (hour < 13)]
    night = columns.value[rpm & ((hour >= 23) | (hour < 5))]
    assert np.median(day) > np.median(night) * 1.1


def test_degradation_shows_in_vibration_hours_before_each_failure(catalog):
    sim = simulate(catalog, machines_per_factory=12, hours=96, mtbf_hours=60, seed=5)
    columns = all_readings(sim)
    bearing = [
        f
        for f in sim.failures
        if f.failure_mode == "bearing_wear"
        and f.failed_at_ms - 30 * HOUR_MS > sim.config.start_ms
        and f.failed_at_ms - f.degradation_start_ms > 12 * HOUR_MS
    ]
    assert bearing, "the scenario should contain bearing failures with history before them"
    for failure in bearing:
        ts, value = one_series(sim, columns, failure.machine_id, "vibration")
        healthy = value[
            (ts >= failure.degradation_start_ms - 6 * HOUR_MS) & (ts < failure.degradation_start_ms)
        ]
        late = value[(ts >= failure.failed_at_ms - 3 * HOUR_MS) & (ts < failure.failed_at_ms)]
        if len(healthy) > 10 and len(late) > 10:
            assert np.median(late) > 1.5 * np.median(healthy), failure


def test_failures_have_corrective_maintenance_and_machines_stop(catalog):
    sim = simulate(catalog, machines_per_factory=10, hours=72, mtbf_hours=50)
    assert sim.failures
    corrective = {m.failure_id: m for m in sim.maintenance if m.kind == "corrective"}
    for failure in sim.failures:
        job = corrective[failure.failure_id]
        assert job.started_at_ms == failure.failed_at_ms
        assert job.completed_at_ms == failure.repaired_at_ms > failure.failed_at_ms
        assert failure.degradation_start_ms <= failure.failed_at_ms
    columns = all_readings(sim)
    failure = sim.failures[0]
    index = next(
        i
        for i, key in enumerate(sim.series)
        if key.machine_id == failure.machine_id and key.metric == "rpm"
    )
    during = (
        (columns.series_index == index)
        & (columns.timestamp > failure.failed_at_ms)
        & (columns.timestamp < failure.repaired_at_ms)
    )
    stopped = columns.value[during]
    assert len(stopped) > 0
    assert np.median(stopped) < 20


def test_write_simulation_files(tmp_path, catalog):
    sim = simulate(catalog, hours=3, malformed_rate=0.01)
    summary = write_simulation(sim, tmp_path, formats=("parquet", "jsonl"))
    assert set(summary.files) >= {
        "readings.parquet",
        "readings.jsonl",
        "failures.csv",
        "maintenance_records.csv",
        "machines.csv",
        "manifest.json",
    }
    table = pq.read_table(tmp_path / "readings.parquet")
    assert table.num_rows == summary.readings
    assert str(table.schema.field("timestamp").type) == "timestamp[ms, tz=UTC]"
    lines = (tmp_path / "readings.jsonl").read_bytes().splitlines()
    assert len(lines) == summary.readings
    validator = Validator(catalog, clock=lambda: 2e9)
    rejected = sum(bool(validate_json(line, validator).rejects) for line in lines)
    malformed = sum(summary.malformed.values())
    assert malformed > 0
    assert malformed <= rejected <= malformed + 0.001 * len(lines)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["readings"] == summary.readings
    with (tmp_path / "machines.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4


def test_invalid_configuration_is_explained():
    with pytest.raises(ValueError, match="interval must be between"):
        FleetConfig(interval_ms=10)
    with pytest.raises(ValueError, match="time zone"):
        FleetConfig(start=datetime(2026, 1, 1))
    FleetConfig(start=datetime(2026, 1, 1, tzinfo=UTC))


def test_the_prelude_is_the_hours_before_the_span_by_the_same_schedule(catalog):
    from iiot.contract import ReadingColumns

    fleet = {"machines_per_factory": 12, "hours": 24, "mtbf_hours": 60, "seed": 5}
    sim = simulate(catalog, **fleet)
    start = sim.config.start_ms
    prelude = ReadingColumns.concat(list(sim.prelude(30.5)))  # whole hours: 31
    assert prelude.timestamp.min() == start - 31 * HOUR_MS
    assert prelude.timestamp.max() == start - sim.config.interval_ms
    assert np.all(np.diff(prelude.timestamp) >= 0), "the prelude is in time order"
    again = ReadingColumns.concat(list(simulate(catalog, **fleet).prelude(31)))
    assert np.array_equal(prelude.value, again.value)
    # reading the prelude leaves the span's readings as they were
    assert np.array_equal(all_readings(sim).value, all_readings(simulate(catalog, **fleet)).value)
    # a fault that began before the start grows through the prelude as it does in the span
    early = [
        f
        for f in sim.failures
        if f.failure_mode == "bearing_wear"
        and start - 31 * HOUR_MS <= f.degradation_start_ms < start - 12 * HOUR_MS
        # at least half-way through its degradation at the start
        and start - f.degradation_start_ms >= (f.failed_at_ms - f.degradation_start_ms) / 2
        and f.failed_at_ms > start
    ]
    assert early, "the scenario should hold a bearing fault under way at the start"
    for failure in early:
        ts, value = one_series(sim, prelude, failure.machine_id, "vibration")
        first = value[
            (ts >= failure.degradation_start_ms) & (ts < failure.degradation_start_ms + HOUR_MS)
        ]
        last = value[ts >= start - HOUR_MS]
        assert np.median(last) > 1.2 * np.median(first), failure


def test_every_hour_of_the_prelude_and_the_span_has_a_stream_of_its_own(catalog):
    """A prelude hour shares no random stream with a span hour (the seed words [seed, 1, k]
    against [seed, i], which SeedSequence pads with zeros), so the prelude repeats no noise."""
    sim = simulate(catalog, machines_per_factory=2, hours=24, seed=5)
    hours = range(-2000, 2000)
    first_draws = {tuple(sim._chunk_rng(index).integers(0, 2**63, size=4)) for index in hours}
    assert len(first_draws) == len(hours)
    # numpy's zero padding, which the seed words rely on (a guard on the dependency): [s, 1]
    # and [s, 1, 0] are one stream, so a prelude word of 0 would repeat span hour 1
    assert np.array_equal(
        np.random.default_rng([7, 1]).integers(0, 2**63, 4),
        np.random.default_rng([7, 1, 0]).integers(0, 2**63, 4),
    )


def test_repairs_before_the_start_stop_the_machine_in_the_prelude_and_are_reported(catalog):
    from iiot.contract import ReadingColumns

    sim = simulate(catalog, machines_per_factory=12, hours=24, mtbf_hours=30, seed=5)
    start = sim.config.start_ms
    recorded = {(m.machine_id, m.completed_at_ms) for m in sim.maintenance}
    repaired = [
        (machine, end) for machine, ends in sim.repaired_before_start().items() for end in ends
    ]
    assert repaired, "the scenario should hold repairs before the start"
    for machine, end in repaired:
        assert end <= start
        assert (machine, end) not in recorded  # the span's own repairs are in `maintenance`
    prelude = ReadingColumns.concat(list(sim.prelude(24)))
    shown = 0
    for machine, end in repaired:
        if end - 20 * 60_000 < start - 24 * HOUR_MS or end + 20 * 60_000 > start:
            continue  # both sides of the restart inside the prelude
        ts, rpm = one_series(sim, prelude, machine, "rpm")
        stopped = rpm[(ts >= end - 10 * 60_000) & (ts < end)]
        running = rpm[(ts >= end + 10 * 60_000) & (ts < end + 20 * 60_000)]
        assert np.median(stopped) < 20 < 500 < np.median(running)
        shown += 1
    assert shown, "no repair ended inside the prelude"
