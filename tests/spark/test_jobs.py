"""bronze -> silver -> gold with Delta on Sail: exactly once, idempotent, incremental, correct."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from iiot.contract import ReadingColumns, Validator
from iiot.wire import encode_batch
from local_platform.steps.lake import columns_from_arrow, land_simulation
from spark_jobs import io, jobs
from spark_jobs.transforms import quality_rules

SETTINGS = jobs.LakeSettings(last_n=20, time_window_ms=300_000, lookback_ms=3_600_000)
# The series spread over many more partitions than the defaults give these small runs.
SPREAD = dataclasses.replace(SETTINGS, rows_per_partition=2_000)
VOLATILE = {"ingest_seq", "batch_id"}  # which run/batch delivered a reading, not what it says


def run(
    spark: Any, paths: io.LakePaths, catalog: Any, settings: jobs.LakeSettings = SETTINGS
) -> list[jobs.StepResult]:
    return jobs.run_all(spark, paths, quality_rules(catalog), settings=settings)


def snapshot(uri: str, drop: set[str] = frozenset()) -> pa.Table:  # type: ignore[assignment]
    """A table's rows, sorted, without the columns named in `drop`."""
    table = io.read_arrow(uri)
    table = table.select([c for c in sorted(table.column_names) if c not in drop])
    return table.sort_by([(c, "ascending") for c in table.column_names if c != "payload"])


def codecs(paths: io.LakePaths) -> dict[str, set[str]]:
    """The Parquet codecs of every column chunk of each table's current files."""
    from deltalake import DeltaTable

    found: dict[str, set[str]] = {}
    for name, uri in paths.tables().items():
        if not DeltaTable.is_deltatable(uri):
            continue
        for file_uri in DeltaTable(uri).file_uris():
            meta = pq.read_metadata(io.local_path(file_uri) if "://" in file_uri else file_uri)
            found.setdefault(name, set()).update(
                meta.row_group(g).column(c).compression
                for g in range(meta.num_row_groups)
                for c in range(meta.num_columns)
            )
    return found


def versions(paths: io.LakePaths) -> dict[str, int | None]:
    return {t.name: t.version for t in io.describe_tables(paths)}


def land_columns(paths: io.LakePaths, columns: ReadingColumns, name: str, seed: int) -> None:
    batch_id = uuid.UUID(int=seed)
    io.land_file(
        io.local_path(paths.landing),
        f"batch/{name}.iiotb",
        encode_batch(columns, batch_id=batch_id),
    )


def expected_valid(simulation: Path, catalog: Any) -> int:
    """Readings of the simulated run that pass the contract (the fault codes do not)."""
    columns = columns_from_arrow(pq.read_table(simulation / "readings.parquet"))
    return Validator(catalog, max_future_ms=10**15).validate_columns(columns).accepted


@pytest.fixture
def lake(tmp_path: Path, simulation: Path) -> io.LakePaths:
    """A lake whose landing zone holds the simulated run: 20% as JSON lines (malformed lines
    included), everything as compact batches (so the JSON share arrives twice), one batch twice."""
    paths = io.LakePaths.from_root(tmp_path / "lake")
    land_simulation(simulation, io.local_path(paths.landing), json_share=0.2, batch_readings=4000)
    return paths


def test_end_to_end_exactly_once_with_quarantine(
    sail: Any, lake: io.LakePaths, simulation: Path, catalog: Any
) -> None:
    bronze, silver, gold = run(sail, lake, catalog)
    assert bronze.rows_written > 0
    assert silver.quarantined > 0

    readings = io.read_arrow(lake.silver)
    assert readings.num_rows == expected_valid(simulation, catalog)
    keys = pc.binary_join_element_wise(
        readings.column("sensor_id"), readings.column("timestamp").cast(pa.string()), "@"
    )
    assert len(pc.unique(keys)) == readings.num_rows  # one row per (sensor_id, timestamp)
    assert silver.duplicates > 0  # the JSON share arrived twice

    bronze_ids = io.read_arrow(lake.bronze, ["batch_id"]).column("batch_id")
    assert len(pc.unique(bronze_ids)) == len(bronze_ids)  # the redelivered batch landed once

    quarantine = io.read_arrow(lake.quarantine)
    fields = set(quarantine.column("reason_field").to_pylist())
    assert {"value", "payload"} <= fields  # -999 fault codes, garbage lines
    assert all(reason for reason in quarantine.column("reason").to_pylist())
    assert pc.sum(pc.equal(quarantine.column("payload"), "")).as_py() in (0, None)

    factory = io.read_arrow(lake.factory_daily).to_pylist()
    assert {row["active_machines"] for row in factory} == {2}  # distinct machines, not rows
    machine = io.read_arrow(lake.machine_daily)
    assert pc.sum(machine.column("reading_count")).as_py() == readings.num_rows
    assert (
        pc.sum(machine.column("anomaly_count")).as_py()
        == pc.sum(readings.column("is_anomaly").cast(pa.int64())).as_py()
    )
    assert gold.partitions == 2


def test_running_twice_changes_nothing(sail: Any, lake: io.LakePaths, catalog: Any) -> None:
    run(sail, lake, catalog)
    before = {name: snapshot(uri) for name, uri in lake.tables().items() if "state" not in name}
    first_versions = versions(lake)
    second = run(sail, lake, catalog)
    assert all(step.skipped for step in second)
    assert versions(lake) == first_versions
    after = {name: snapshot(uri) for name, uri in lake.tables().items() if "state" not in name}
    for name, table in before.items():
        assert after[name].equals(table), name


def test_duplicate_batches_and_readings_land_once(
    sail: Any, lake: io.LakePaths, simulation: Path, catalog: Any
) -> None:
    run(sail, lake, catalog)
    silver_before = snapshot(lake.silver)
    # The same files again under other names, and the same readings in a new batch id.
    landing = io.local_path(lake.landing)
    for path in sorted((landing / "batch").glob("part-0000[0-2].iiotb")):
        shutil.copy(path, landing / "batch" / f"again-{path.name}")
    columns = columns_from_arrow(pq.read_table(simulation / "readings.parquet"))
    land_columns(lake, columns.take(slice(0, 5000)), "resent-readings", seed=99)
    bronze, silver, _gold = run(sail, lake, catalog)
    assert bronze.rows_written == 1  # only the new batch id
    assert silver.rows_written == 0
    assert silver.duplicates > 0
    assert snapshot(lake.silver).equals(silver_before)


def test_late_data_gives_the_same_lake_as_one_complete_run(
    sail: Any, tmp_path: Path, simulation: Path, catalog: Any
) -> None:
    columns = columns_from_arrow(pq.read_table(simulation / "readings.parquet"))
    order = np.argsort(columns.timestamp, kind="stable")
    columns = columns.take(order)
    late = np.zeros(len(columns), dtype=bool)
    late[len(columns) // 3 : len(columns) // 3 + 300] = True  # an hour-old gap, delivered late
    tail = np.arange(len(columns)) >= (len(columns) * 9) // 10

    complete = io.LakePaths.from_root(tmp_path / "complete")
    land_columns(complete, columns, "all", seed=1)
    run(sail, complete, catalog)

    # the incremental lake also spreads its series over more partitions: the same rows result
    incremental = io.LakePaths.from_root(tmp_path / "incremental")
    land_columns(incremental, columns.take(~late & ~tail), "on-time", seed=2)
    run(sail, incremental, catalog, SPREAD)
    land_columns(incremental, columns.take(tail), "next", seed=3)
    run(sail, incremental, catalog, SPREAD)
    land_columns(incremental, columns.take(late), "late", seed=4)
    _bronze, silver, gold = run(sail, incremental, catalog, SPREAD)
    assert silver.rows_written == int(late.sum()) - silver.duplicates
    assert silver.extra["late partitions updated"] >= 1
    assert gold.partitions >= 1
    # appends, the late readings' updates and gold's merges all wrote ZSTD Parquet
    written = codecs(incremental)
    assert {"silver.readings", "gold.machine_daily", "gold.factory_daily"} <= set(written)
    assert all(found == {"ZSTD"} for found in written.values()), written

    for uri_complete, uri_incremental in (
        (complete.silver, incremental.silver),
        (complete.machine_daily, incremental.machine_daily),
        (complete.factory_daily, incremental.factory_daily),
    ):
        expected = snapshot(uri_complete, VOLATILE)
        actual = snapshot(uri_incremental, VOLATILE)
        assert actual.num_rows == expected.num_rows
        for name in expected.column_names:
            left, right = expected.column(name), actual.column(name)
            if pa.types.is_floating(left.type):
                np.testing.assert_allclose(
                    left.to_numpy(zero_copy_only=False),
                    right.to_numpy(zero_copy_only=False),
                    rtol=1e-9,
                    err_msg=f"{uri_incremental}: {name}",
                )
            else:
                assert left.equals(right), f"{uri_incremental}: {name}"


def test_corrupt_batches_and_bad_json_are_quarantined_with_reasons(
    sail: Any, tmp_path: Path, catalog: Any
) -> None:
    paths = io.LakePaths.from_root(tmp_path / "lake")
    landing = io.local_path(paths.landing)
    good = (
        b'{"timestamp": 1767571200000, "factory_id": "F01", "machine_id": "M1", '
        b'"sensor_id": "M1-t", "metric": "temperature", "value": 20.5, "unit": "degC"}'
    )
    too_hot = good.replace(b"20.5", b"900.0").replace(b"1767571200000", b"1767571210000")
    io.land_file(landing, "json/a.jsonl", b"\n".join([good, too_hot, b"{not json"]) + b"\n")
    columns = ReadingColumns.from_readings([])
    batch = bytearray(encode_batch(columns, batch_id=uuid.UUID(int=5)))
    batch[-1] ^= 0xFF  # corrupted in transit
    io.land_file(landing, "batch/broken.iiotb", bytes(batch))
    _bronze, silver, _gold = run(sail, paths, catalog)
    assert silver.rows_written == 1
    reasons = sorted(io.read_arrow(paths.quarantine).column("reason").to_pylist())
    assert len(reasons) == 3
    assert any(r.startswith("body: CRC-32 mismatch") for r in reasons)
    assert any(r.startswith("payload: not valid JSON") for r in reasons)
    assert any(
        r.startswith("value: 900.0 degC is outside the physically valid range") for r in reasons
    )


def test_maintenance_compacts_and_writes_spectrum_manifests(
    sail: Any, lake: io.LakePaths, catalog: Any
) -> None:
    run(sail, lake, catalog)
    rows_before = snapshot(lake.silver)
    result = io.maintain_local(
        lake.silver, retention_hours=0, spectrum=True, enforce_retention=False
    )
    assert result.files_after <= result.files_before
    assert codecs(lake)["silver.readings"] == {"ZSTD"}  # compaction keeps the codec
    assert result.manifests == 2
    assert snapshot(lake.silver).equals(rows_before)
    from deltalake import DeltaTable

    table = DeltaTable(lake.silver)
    assert table.metadata().configuration["delta.enableDeletionVectors"] == "false"
    assert "deletionVectors" not in (table.protocol().reader_features or [])
    manifests = sorted(io.local_path(lake.silver).glob("_symlink_format_manifest/*/*/manifest"))
    listed = [line for m in manifests for line in m.read_text().split()]
    assert sorted(listed) == sorted("file://" + f for f in table.file_uris())
    # the lake still runs after maintenance (nothing new: a no-op)
    assert all(step.skipped for step in run(sail, lake, catalog))


def land_in_prefix(paths: io.LakePaths, prefix: str, name: str, columns: ReadingColumns) -> None:
    """A compact batch delivered the way Firehose names it: under its arrival date and hour."""
    io.land_file(
        io.local_path(paths.landing),
        f"{prefix}/{name}",
        encode_batch(columns, batch_id=uuid.uuid5(uuid.NAMESPACE_URL, name)),
    )


def test_bronze_lists_recent_prefixes_and_a_late_file_in_an_old_prefix_still_lands(
    sail: Any, tmp_path: Path, simulation: Path, catalog: Any
) -> None:
    columns = columns_from_arrow(pq.read_table(simulation / "readings.parquet"))
    parts = [columns.take(slice(i * 2000, (i + 1) * 2000)) for i in range(5)]
    paths = io.LakePaths.from_root(tmp_path / "lake")
    land_in_prefix(paths, "date=2026-01-03/hour=09", "old.bin", parts[0])
    land_in_prefix(paths, "date=2026-01-05/hour=10", "a.bin", parts[1])
    first = run(sail, paths, catalog)[0]
    assert first.rows_written == 2  # the first run lists every prefix

    land_in_prefix(paths, "date=2026-01-05/hour=12", "b.bin", parts[2])
    second = run(sail, paths, catalog)[0]
    assert second.rows_written == 1
    assert second.extra["landed files listed"] == 2  # 2026-01-03 is older than the window

    # Firehose delivered late into an earlier hour: inside the window, so it lands.
    land_in_prefix(paths, "date=2026-01-05/hour=10", "late.bin", parts[3])
    bronze, silver, _gold = run(sail, paths, catalog)
    assert bronze.rows_written == 1
    assert silver.rows_written == 2000
    # A late file older than the window waits for a full listing (a sweep), then lands.
    land_in_prefix(paths, "date=2026-01-03/hour=09", "very-late.bin", parts[4])
    assert run(sail, paths, catalog)[0].skipped
    since = io.landed_window_start(sail, paths, jobs.LakeSettings().landing_lateness_ms)
    listed = {
        item.path.rsplit("/", 1)[-1]
        for item in io.list_landing(sail, paths.landing, since_ms=since)
    }
    assert listed == {"a.bin", "b.bin", "late.bin"}
    swept = jobs.run_all(sail, paths, quality_rules(catalog), settings=SETTINGS, full_listing=True)
    assert swept[0].rows_written == 1
    assert io.read_arrow(paths.silver).num_rows == expected_rows(parts, catalog)
    # every file was read once: nothing new, nothing read again
    assert run(sail, paths, catalog)[0].skipped


def test_a_landed_file_rewritten_in_place_is_read_again_and_deduplicated_by_content(
    sail: Any, tmp_path: Path, simulation: Path, catalog: Any
) -> None:
    columns = columns_from_arrow(pq.read_table(simulation / "readings.parquet"))
    paths = io.LakePaths.from_root(tmp_path / "lake")
    land_in_prefix(paths, "date=2026-01-05/hour=10", "a.bin", columns.take(slice(0, 1000)))
    run(sail, paths, catalog)
    silver_before = snapshot(paths.silver)
    target = io.local_path(paths.landing) / "date=2026-01-05/hour=10/a.bin"
    content = target.read_bytes()
    io.land_file(io.local_path(paths.landing), "date=2026-01-05/hour=10/a.bin", content + content)
    bronze = run(sail, paths, catalog)[0]
    assert bronze.extra["landed payloads"] == 2  # read again: its size changed
    assert bronze.rows_written == 0
    assert bronze.duplicates == 2
    assert snapshot(paths.silver).equals(silver_before)


def expected_rows(parts: list[ReadingColumns], catalog: Any) -> int:
    validator = Validator(catalog, max_future_ms=10**15)
    return sum(validator.validate_columns(part).accepted for part in parts)


def test_committed_files_carry_exact_row_counts_and_safe_bounds(tmp_path: Path) -> None:
    """The statistics a ZSTD file is committed with (readers skip files by them): exact row and
    null counts, bounds only for integer and date columns, over every row group."""
    import datetime
    import json

    table = pa.table(
        {
            "seq": pa.array([5, None, 9, 2], pa.int64()),
            "day": pa.array([datetime.date(2026, 1, d) for d in (3, 1, 2, 4)], pa.date32()),
            "value": pa.array([1.5, float("nan"), 0.5, 2.0], pa.float64()),
            "name": pa.array(["b", "a", None, "c"], pa.string()),
            "empty": pa.nulls(4, pa.int32()),
        }
    )
    path = tmp_path / "part.parquet"
    pq.write_table(table, path, row_group_size=2, compression="zstd")
    stats = json.loads(io._file_stats(path))
    assert stats["numRecords"] == 4
    assert stats["nullCount"] == {"seq": 1, "day": 0, "value": 0, "name": 1, "empty": 4}
    assert stats["minValues"] == {"seq": 2, "day": "2026-01-01"}
    assert stats["maxValues"] == {"seq": 9, "day": "2026-01-04"}


def test_zstd_appends_and_merges_keep_partition_values_that_paths_escape(
    sail: Any, tmp_path: Path
) -> None:
    """Ids may hold `:` and `.` (the contract's id rule): Sail names such a partition folder as
    it is, delta-rs escapes it, and both are read back under the id itself."""
    uri = io.LakePaths.from_root(tmp_path).root + "/table"
    rows = [("F:1.a", 1, 2.0), ("plain", 2, 3.0)]
    frame = sail.createDataFrame(rows, "factory_id string, n long, v double")
    io.append(frame, uri, partition_by=("factory_id",))
    io.append(frame, uri, partition_by=("factory_id",))
    changed = sail.createDataFrame([("F:1.a", 1, 9.0), ("F:1.a", 3, 4.0)], frame.schema)
    io.merge(sail, changed, uri, keys=("factory_id", "n"), update_columns=("v",))
    assert sorted(map(tuple, io.read_table(sail, uri).collect())) == [
        ("F:1.a", 1, 9.0),
        ("F:1.a", 1, 9.0),
        ("F:1.a", 3, 4.0),
        ("plain", 2, 3.0),
        ("plain", 2, 3.0),
    ]
    assert io.read_arrow(uri).num_rows == 5


def test_listing_through_hadoop_prunes_the_same_prefixes(classic: Any, tmp_path: Path) -> None:
    """On EMR the listing goes through Hadoop's FileSystem (classic Spark; here on local files):
    the same files, sizes and arrival hours as the local walk, the old prefixes left out."""
    landing = tmp_path / "landing"
    for relative in (
        "date=2026-01-03/hour=09/old",
        "date=2026-01-05/hour=10/a",
        "date=2026-01-05/hour=12/b",
        "date=2026-01-05/c",
        "json/d.jsonl",
        "date=2026-01-05/hour=12/.e.partial",
    ):
        io.land_file(landing, relative, relative.encode())
    since = 1_767_571_200_000  # 2026-01-05T00:00Z
    local = io.list_landing(classic, landing.as_uri(), since_ms=since)
    hadoop = io._walk_hadoop(classic, landing.as_uri(), since)

    def summary(items: list[io.LandedObject]) -> list[tuple[str, int, int | None]]:
        return sorted((unquote(i.path.split("/landing/")[1]), i.size, i.hour_ms) for i in items)

    assert summary(hadoop) == summary(local)
    assert summary(local) == [
        ("date=2026-01-05/c", 17, since),
        ("date=2026-01-05/hour=10/a", 25, since + 10 * 3_600_000),
        ("date=2026-01-05/hour=12/b", 25, since + 12 * 3_600_000),
        ("json/d.jsonl", 12, None),
    ]
    assert len(io._walk_hadoop(classic, landing.as_uri(), None)) == 5
