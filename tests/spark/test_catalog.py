"""Partition registration: what `maintain --catalog-tables` does to the tables Spectrum reads.

The catalog tables are built from the lake stack's own definitions (columns, partition keys,
symlink-manifest location, formats) in a real Hive metastore: classic PySpark with Hive support
and Derby, in its own JVM, standing in for the Glue Data Catalog that EMR uses as metastore.
The manifests are written by the job's own code over Delta tables written with delta-rs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from spark_jobs import io
from stacks.artifacts import ROOT
from stacks.lake_stack import TABLES, DeltaTable

DATABASE = "iiot_test_lake"

# Runs in a fresh interpreter: Hive support must be chosen when the JVM starts.
HIVE_SCRIPT = """
import json, sys
from pyspark.sql import SparkSession
from spark_jobs import io

warehouse, ddl, tables = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
spark = (
    SparkSession.builder.master("local[1]")
    .config("spark.ui.enabled", "false")
    .config("spark.sql.warehouse.dir", f"{warehouse}/warehouse")
    .config("spark.hadoop.javax.jdo.option.ConnectionURL",
            f"jdbc:derby:;databaseName={warehouse}/metastore;create=true")
    .enableHiveSupport()
    .getOrCreate()
)
for statement in ddl:
    spark.sql(statement)
for table in tables:
    spark.sql(io.register_partitions_statement(table)).collect()
print(json.dumps({
    table: sorted(row[0] for row in spark.sql(f"SHOW PARTITIONS {table}").collect())
    for table in tables
}))
spark.stop()
"""


def _create_table(table: DeltaTable, location: str) -> str:
    columns = ", ".join(f"`{c.name}` {c.type}" for c in table.columns)
    partitions = ", ".join(f"`{c.name}` {c.type}" for c in table.partition_keys)
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS {DATABASE}.{table.name} ({columns}) "
        f"PARTITIONED BY ({partitions}) "
        "ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe' "
        "STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat' "
        "OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat' "
        f"LOCATION '{location}/_symlink_format_manifest/'"
    )


def _write_day(uri: Path, table: DeltaTable, day: date, factories: list[str]) -> None:
    """Rows for `day` in each factory (partition columns set, other columns left null)."""
    from deltalake import DeltaTable as DeltaLakeTable
    from deltalake import write_deltalake

    partition_names = [c.name for c in table.partition_keys]
    rows = {
        "event_date": pa.array([day] * len(factories), pa.date32()),
        "factory_id": pa.array(factories, pa.string()),
        "metric": pa.array(["temperature"] * len(factories), pa.string()),
    }
    frame = pa.table({name: rows[name] for name in ["metric", *partition_names]})
    write_deltalake(str(uri), frame, mode="append", partition_by=partition_names)
    io.write_symlink_manifests(DeltaLakeTable(str(uri)), str(uri))


def _register(tmp_path: Path, locations: dict[str, Path]) -> dict[str, list[str]]:
    ddl = [f"CREATE DATABASE IF NOT EXISTS {DATABASE}"] + [
        _create_table(table, locations[table.name].as_uri()) for table in TABLES
    ]
    names = [f"{DATABASE}.{table.name}" for table in TABLES]
    # Derby writes derby.log into the working directory: run in tmp_path.
    environment = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    environment.pop("SPARK_CONNECT_MODE_ENABLED", None)
    environment.pop("SPARK_REMOTE", None)
    result = subprocess.run(
        [sys.executable, "-c", HIVE_SCRIPT, str(tmp_path), json.dumps(ddl), json.dumps(names)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    registered: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return {name.split(".")[1]: partitions for name, partitions in registered.items()}


def test_maintain_registers_each_new_partition_once(tmp_path: Path) -> None:
    assert all(table.partition_keys for table in TABLES)  # what the stack passes to maintain
    locations = {table.name: tmp_path / "lake" / table.path for table in TABLES}
    for table in TABLES:
        factories = ["factory-01", "factory-02"]
        _write_day(locations[table.name], table, date(2026, 11, 20), factories)

    first = _register(tmp_path, locations)
    assert first["silver_readings"] == [
        "event_date=2026-11-20/factory_id=factory-01",
        "event_date=2026-11-20/factory_id=factory-02",
    ]
    assert first["gold_machine_daily"] == ["event_date=2026-11-20"]
    assert first["gold_factory_daily"] == ["event_date=2026-11-20"]

    # A new day arrives: the next maintain adds its partitions; the old ones stay, once.
    for table in TABLES:
        _write_day(locations[table.name], table, date(2026, 11, 21), ["factory-01"])
    second = _register(tmp_path, locations)
    assert second["silver_readings"] == [
        *first["silver_readings"],
        "event_date=2026-11-21/factory_id=factory-01",
    ]
    assert second["gold_factory_daily"] == ["event_date=2026-11-20", "event_date=2026-11-21"]


@pytest.mark.parametrize(
    "name", ["readings", "db.table.extra", "db.`x`", "db.x;DROP TABLE y", "db.", ".x"]
)
def test_catalog_table_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match=r"expected database\.table"):
        io.register_partitions_statement(name)
