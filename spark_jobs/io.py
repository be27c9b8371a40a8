"""Every read and write of the lake: Delta tables, landed raw files and the jobs' watermarks.

Table locations derive from one lake root (`file:///...` locally, `s3://bucket/prefix` in
production). Spark does the data I/O on every engine (Sail locally, Apache Spark + delta-spark on
EMR Serverless); table maintenance (compaction, vacuum, table properties, symlink manifests) uses
delta-rs (`deltalake`) locally, because Sail does not parse `OPTIMIZE`/`VACUUM`, and the
equivalent Spark SQL in production (`maintenance_statements`).

**Every table is ZSTD Parquet** (`PARQUET_CODEC`, as the source design names it). Apache Spark
writes it from the session's `spark.sql.parquet.compression.codec` (`SPARK_CONF`, set by
`spark_jobs.main`) and the writer's option. Sail's Delta writer always writes snappy (0.7.2: its
writer takes no Parquet properties), so on Sail a local table's rows are written by Sail as
ZSTD Parquet files and committed with delta-rs (`append`: Sail computes and encodes, nothing is
written twice), and merges run in delta-rs with ZSTD writer properties (`merge`).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812  (the PySpark convention)

PARQUET_CODEC = "zstd"
ZSTD_LEVEL = 3  # zstd's default: about 3 times snappy's ratio on silver at snappy's write cost
SPARK_CONF = {"spark.sql.parquet.compression.codec": PARQUET_CODEC}

SPECTRUM_PROPERTIES = {
    # Redshift Spectrum reads Delta through symlink manifests and cannot apply deletion vectors.
    "delta.enableDeletionVectors": "false",
}


@dataclass(frozen=True)
class LakePaths:
    """Where each part of the lake lives under one root."""

    root: str

    @classmethod
    def from_root(cls, root: str | Path) -> LakePaths:
        """Accept `s3://...`, `file://...` or a local directory (made absolute)."""
        text = str(root)
        if "://" not in text:
            text = Path(text).expanduser().resolve().as_uri()
        return cls(text.rstrip("/"))

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def landing(self) -> str:
        return self._join("landing")

    @property
    def bronze(self) -> str:
        return self._join("bronze", "raw_batches")

    @property
    def silver(self) -> str:
        return self._join("silver", "readings")

    @property
    def quarantine(self) -> str:
        return self._join("silver", "quarantine")

    @property
    def machine_daily(self) -> str:
        return self._join("gold", "machine_daily")

    @property
    def factory_daily(self) -> str:
        return self._join("gold", "factory_daily")

    @property
    def state(self) -> str:
        return self._join("_state", "watermarks")

    @property
    def changes(self) -> str:
        return self._join("_state", "silver_changes")

    @property
    def landed(self) -> str:
        return self._join("_state", "landed_files")

    def tables(self) -> dict[str, str]:
        """Every Delta table of the lake by name (the state table last)."""
        return {
            "bronze.raw_batches": self.bronze,
            "silver.readings": self.silver,
            "silver.quarantine": self.quarantine,
            "gold.machine_daily": self.machine_daily,
            "gold.factory_daily": self.factory_daily,
            "_state.watermarks": self.state,
            "_state.silver_changes": self.changes,
            "_state.landed_files": self.landed,
        }

    @property
    def is_local(self) -> bool:
        return self.root.startswith("file://")


def local_path(uri: str) -> Path:
    """The filesystem path of a `file://` URI."""
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


# ------------------------------------------------------------------------------ landed files

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# Firehose's prefix (stacks/ingestion_stack.py): the arrival date and hour of an object's records.
_DATE_FOLDER = re.compile(r"date=(\d{4})-(\d{2})-(\d{2})")
_HOUR_FOLDER = re.compile(r"hour=(\d{2})")


@dataclass(frozen=True)
class LandedObject:
    """One landed file: its URI, size and modification time, and the arrival hour its
    `date=YYYY-MM-DD/hour=HH` prefix names (epoch ms; None for a file outside such folders)."""

    path: str
    size: int
    modified_ms: int
    hour_ms: int | None


def list_landing(
    spark: SparkSession, landing_uri: str, *, since_ms: int | None = None
) -> list[LandedObject]:
    """The landed files, without listing the `date=/hour=` prefixes that end at or before
    `since_ms` (None: every prefix). Files in other folders are always listed. Hidden files and
    folders (`.` or `_`: partial writes) are skipped, as Spark does."""
    if landing_uri.startswith("file://"):
        folder = local_path(landing_uri)
        if not folder.is_dir():
            return []
        return sorted(_walk_local(folder, since_ms, None, None), key=lambda o: o.path)
    return sorted(_walk_hadoop(spark, landing_uri, since_ms), key=lambda o: o.path)


def _folder_span(name: str, day_ms: int | None) -> tuple[int | None, int | None]:
    """(start ms, length ms) of a `date=` or `hour=` folder (None: another folder)."""
    if day_ms is None:
        match = _DATE_FOLDER.fullmatch(name)
        if match:
            day = date(int(match[1]), int(match[2]), int(match[3]))
            return (day - date(1970, 1, 1)).days * DAY_MS, DAY_MS
        return None, None
    match = _HOUR_FOLDER.fullmatch(name)
    if match:
        return day_ms + int(match[1]) * HOUR_MS, HOUR_MS
    return None, None


def _walk_local(
    folder: Path, since_ms: int | None, day_ms: int | None, hour_ms: int | None
) -> Iterator[LandedObject]:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_dir(follow_symlinks=False):
                start, length = _folder_span(entry.name, day_ms)
                if start is None or length is None:
                    yield from _walk_local(Path(entry.path), since_ms, day_ms, hour_ms)
                    continue
                if since_ms is not None and start + length <= since_ms:
                    continue  # a prefix wholly before the window: not listed
                is_day = length == DAY_MS
                yield from _walk_local(
                    Path(entry.path),
                    since_ms,
                    start if is_day else day_ms,
                    None if is_day else start,
                )
            elif entry.is_file():
                stat = entry.stat()
                yield LandedObject(
                    Path(entry.path).as_uri(),
                    stat.st_size,
                    int(stat.st_mtime * 1000),
                    hour_ms if hour_ms is not None else day_ms,
                )


def _walk_hadoop(spark: SparkSession, landing_uri: str, since_ms: int | None) -> list[LandedObject]:
    """`list_landing` through Hadoop's FileSystem (Apache Spark, e.g. S3 on EMR); on a Spark
    Connect session (no JVM here) the engine lists the whole prefix, and contents stay unread."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:
        return _list_with_engine(spark, landing_uri)
    root = jvm.org.apache.hadoop.fs.Path(landing_uri)
    filesystem = root.getFileSystem(spark._jsc.hadoopConfiguration())
    if not filesystem.exists(root):
        return []
    found: list[LandedObject] = []

    # Paths are built from the landing URI and the entries' names: a Hadoop path's own string
    # form escapes characters such as `=` in folder names.
    def walk(folder: Any, uri: str, day_ms: int | None, hour_ms: int | None) -> None:
        for status in filesystem.listStatus(folder):
            name = status.getPath().getName()
            path = f"{uri}/{name}"
            if name.startswith((".", "_")):
                continue
            if status.isDirectory():
                start, length = _folder_span(name, day_ms)
                if start is None or length is None:
                    walk(status.getPath(), path, day_ms, hour_ms)
                elif since_ms is None or start + length > since_ms:
                    is_day = length == DAY_MS
                    walk(
                        status.getPath(),
                        path,
                        start if is_day else day_ms,
                        None if is_day else start,
                    )
            else:
                found.append(
                    LandedObject(
                        path,
                        int(status.getLen()),
                        int(status.getModificationTime()),
                        hour_ms if hour_ms is not None else day_ms,
                    )
                )

    walk(root, landing_uri.rstrip("/"), None, None)
    return found


def _list_with_engine(spark: SparkSession, landing_uri: str) -> list[LandedObject]:
    rows = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(landing_uri)
        .select("path", "length", "modificationTime")
        .collect()
    )
    found = []
    for row in rows:
        day_ms = hour_ms = None
        for part in str(row["path"]).split("/"):
            start, length = _folder_span(part, day_ms)
            if start is not None and length == DAY_MS:
                day_ms = start
            elif start is not None:
                hour_ms = start
        modified = row["modificationTime"]
        found.append(
            LandedObject(
                str(row["path"]),
                int(row["length"]),
                int(modified.timestamp() * 1000) if modified is not None else 0,
                hour_ms if hour_ms is not None else day_ms,
            )
        )
    return found


def read_landed_files(spark: SparkSession, objects: Sequence[LandedObject]) -> DataFrame | None:
    """The content of the given landed files (path, content), or None for no files.

    The files are named to the engine one by one: Sail infers partitions from `key=value`
    folders even with `recursiveFileLookup`, and fails the whole read when Firehose's
    `date=.../hour=...` folders sit next to any other (`json/`, or one stray file); and it
    leaves out empty files, which Spark reads (as empty content, which silver quarantines:
    every landed object is accounted for).
    """
    reader = spark.read.format("binaryFile")
    sized = [item.path for item in objects if item.size]
    empty = [(item.path, b"") for item in objects if not item.size]
    frames = [reader.load(sized).select("path", "content")] if sized else []
    if empty:
        frames.append(spark.createDataFrame(empty, "path string, content binary"))
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])


def read_landed(spark: SparkSession, landing_uri: str) -> DataFrame | None:
    """Every landed raw file (path, content), or None when nothing has landed yet (the whole
    landing zone; the bronze job reads only the files its manifest has not seen)."""
    if not landing_uri.startswith("file://"):
        return (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .load(landing_uri)
            .select("path", "content")
        )
    return read_landed_files(spark, list_landing(spark, landing_uri))


def land_file(landing_dir: Path, relative: str, content: bytes) -> Path:
    """Write one raw file the way Firehose lands it (write then rename: never half a file)."""
    target = landing_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    partial.write_bytes(content)
    partial.replace(target)
    return target


# -------------------------------------------------------------------------------- Delta I/O


def table_exists(spark: SparkSession, uri: str) -> bool:
    """Whether a Delta table exists at `uri`."""
    if uri.startswith("file://"):
        return (local_path(uri) / "_delta_log").is_dir()
    try:
        spark.read.format("delta").load(uri).schema  # noqa: B018  (analysis fails when absent)
    except Exception:  # the engines raise different classes for a missing table
        return False
    return True


def read_table(spark: SparkSession, uri: str, columns: Sequence[str] | None = None) -> DataFrame:
    """A Delta table, with its columns in `columns` order when given (engines differ)."""
    frame = spark.read.format("delta").load(uri)
    return frame.select(*columns) if columns else frame


def append(frame: DataFrame, uri: str, *, partition_by: Sequence[str] = ()) -> None:
    """Append rows as ZSTD Parquet (creating the table on first write)."""
    if _sail_local(frame, uri):
        _append_staged(frame, uri, partition_by)
        return
    writer = frame.write.format("delta").mode("append").option("compression", PARQUET_CODEC)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(uri)


def overwrite(frame: DataFrame, uri: str, *, partition_by: Sequence[str] = ()) -> None:
    """Replace a table's content (only the seeds' comparison job in the benchmark does this)."""
    writer = frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(uri)


def merge(
    spark: SparkSession,
    source: DataFrame,
    uri: str,
    *,
    keys: Sequence[str],
    update_columns: Sequence[str] | None,
    insert: bool = True,
    target_filter: str | None = None,
) -> None:
    """`MERGE INTO` the table at `uri`: match on `keys`; update `update_columns` of matches
    (`None`: leave matches alone); insert the rest. `target_filter` (SQL on the target `t`, e.g.
    a partition predicate) lets the engine skip the files a merge cannot touch."""
    if _sail_local(source, uri):
        _merge_delta_rs(source, uri, keys, update_columns, insert, target_filter)
        return
    view = f"merge_source_{uuid.uuid4().hex}"
    source.createOrReplaceTempView(view)
    condition = " AND ".join(f"t.`{key}` = s.`{key}`" for key in keys)
    if target_filter:
        condition = f"({target_filter}) AND {condition}"
    clauses = []
    if update_columns:
        sets = ", ".join(f"t.`{c}` = s.`{c}`" for c in update_columns)
        clauses.append(f"WHEN MATCHED THEN UPDATE SET {sets}")
    if insert:
        clauses.append("WHEN NOT MATCHED THEN INSERT *")
    try:
        spark.sql(
            f"MERGE INTO delta.`{uri}` AS t USING {view} AS s ON {condition} {' '.join(clauses)}"
        ).collect()
    finally:
        spark.catalog.dropTempView(view)


# ------------------------------------------------------------ ZSTD Delta writes next to Sail


def _sail_local(frame: DataFrame, uri: str) -> bool:
    """A local table written from Sail (a Spark Connect DataFrame): Sail's own Delta writer
    would write snappy."""
    return uri.startswith("file://") and type(frame).__module__.startswith("pyspark.sql.connect")


def zstd_writer_properties() -> Any:
    """delta-rs writer properties for the lake's Parquet (ZSTD)."""
    from deltalake import WriterProperties

    return WriterProperties(compression="ZSTD", compression_level=ZSTD_LEVEL)


def _append_staged(frame: DataFrame, uri: str, partition_by: Sequence[str]) -> None:
    """Sail writes the rows as ZSTD Parquet (partition folders as Delta lays them out) into a
    hidden staging folder beside the table; the files move into the table and one delta-rs
    commit adds them, with their row counts and statistics. A crash before the commit leaves
    unreferenced files, which no reader sees and vacuum removes."""
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, create_table_with_add_actions

    table_dir = local_path(uri)
    staging = table_dir.parent / f".{table_dir.name}.staging-{uuid.uuid4().hex}"
    try:
        writer = frame.write.format("parquet").option("compression", f"zstd({ZSTD_LEVEL})")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.save(staging.as_uri())
        actions: list[Any] = []
        for file in sorted(staging.rglob("*.parquet")):
            folder = file.parent.relative_to(staging)
            values = _partition_values(folder, partition_by)
            target = table_dir / folder / f"part-{uuid.uuid4().hex}-c000.zstd.parquet"
            stats = _file_stats(file)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
            relative = target.relative_to(table_dir).as_posix()  # delta-rs encodes it
            actions.append(
                AddAction(
                    relative, target.stat().st_size, values, int(time.time() * 1000), True, stats
                )
            )
    finally:
        _remove_tree(staging)
    if DeltaTable.is_deltatable(uri):
        table = DeltaTable(uri)
        if actions:
            table.create_write_transaction(
                actions,
                mode="append",
                schema=table.schema(),
                partition_by=list(table.metadata().partition_columns) or None,
            )
        return
    from deltalake import Schema
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = Schema.from_arrow(to_arrow_schema(frame.schema, timezone="UTC"))
    create_table_with_add_actions(
        uri, schema, actions, mode="append", partition_by=list(partition_by) or None
    )


def _partition_values(folder: Path, partition_by: Sequence[str]) -> dict[str, str | None]:
    """`column=value` folders -> Delta's partition values (Sail writes the values as they are:
    ids and dates, whose characters need no escaping in a path)."""
    values: dict[str, str | None] = {}
    for part in folder.parts:
        name, _, value = part.partition("=")
        values[name] = None if value == "__HIVE_DEFAULT_PARTITION__" else value
    missing = set(partition_by) - set(values)
    if missing:
        raise RuntimeError(f"staged Parquet file under {folder} lacks partitions {missing}")
    return values


def _file_stats(path: Path) -> str:
    """Delta statistics of one Parquet file from its footer: row count, null counts, and
    minimum/maximum of integer and date columns (what the jobs filter on: timestamps, sequence
    numbers). Bounds are left out where any row group lacks them, so no reader skips a file
    that holds matching rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    schema = meta.schema.to_arrow_schema()
    nulls: dict[str, int] = {}
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    for index, field in enumerate(schema):
        bounded = pa.types.is_integer(field.type) or pa.types.is_date(field.type)
        count, lows, highs, complete = 0, [], [], True
        for group in range(meta.num_row_groups):
            column = meta.row_group(group).column(index)
            stats = column.statistics
            if stats is None or not stats.has_null_count:
                complete = False
                break
            count += stats.null_count
            if stats.has_min_max:
                lows.append(stats.min)
                highs.append(stats.max)
            elif stats.null_count < column.num_values:
                bounded = False
        if not complete:
            continue
        nulls[field.name] = count
        if bounded and lows:
            low[field.name] = _stat_value(min(lows))
            high[field.name] = _stat_value(max(highs))
    return json.dumps(
        {"numRecords": meta.num_rows, "minValues": low, "maxValues": high, "nullCount": nulls}
    )


def _stat_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _merge_delta_rs(
    source: DataFrame,
    uri: str,
    keys: Sequence[str],
    update_columns: Sequence[str] | None,
    insert: bool,
    target_filter: str | None,
) -> None:
    """`merge` with delta-rs: the source streams out of Sail as Arrow batches."""
    from deltalake import DeltaTable

    condition = " AND ".join(f't."{key}" = s."{key}"' for key in keys)
    if target_filter:
        condition = f"({target_filter}) AND {condition}"
    merger = DeltaTable(uri).merge(
        _arrow_stream(source),
        condition,
        source_alias="s",
        target_alias="t",
        writer_properties=zstd_writer_properties(),
    )
    if update_columns:
        merger = merger.when_matched_update({c: f's."{c}"' for c in update_columns})
    if insert:
        merger = merger.when_not_matched_insert_all()
    merger.execute()


def _arrow_stream(frame: DataFrame) -> Any:
    """A DataFrame's rows as an Arrow stream, batch by batch as Spark Connect sends them."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(frame.schema, timezone="UTC")
    connect: Any = frame  # a Spark Connect DataFrame: its client streams the result
    client = connect.sparkSession.client
    if not hasattr(client, "to_table_as_iterator"):  # an older client: the whole result at once
        return connect.toArrow().cast(schema)
    plan = connect._plan.to_proto(client)

    def batches() -> Iterable[Any]:
        for item in client.to_table_as_iterator(plan, {}):
            if isinstance(item, pa.Table):
                yield from item.cast(schema).to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def partition_predicate(partitions: Iterable[tuple[Any, str]], alias: str | None = "t") -> str:
    """SQL selecting (event_date, factory_id) partitions, grouped by date for file pruning;
    `alias` qualifies the columns (the merge target `t`; None in a DataFrame filter)."""
    prefix = f"{alias}." if alias else ""
    by_date: dict[str, list[str]] = {}
    for event_date, factory_id in partitions:
        by_date.setdefault(str(event_date), []).append(factory_id)
    terms = []
    for event_date, factories in sorted(by_date.items()):
        listed = ", ".join(_sql_string(f) for f in sorted(set(factories)))
        terms.append(
            f"({prefix}event_date = DATE {_sql_string(event_date)} AND "
            f"{prefix}factory_id IN ({listed}))"
        )
    return " OR ".join(terms) if terms else "FALSE"


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ------------------------------------------------------------------------------- watermarks


def read_watermark(spark: SparkSession, paths: LakePaths, consumer: str) -> int:
    """The last source sequence number `consumer` has fully processed (0 before any run)."""
    if not table_exists(spark, paths.state):
        return 0
    row = (
        read_table(spark, paths.state)
        .filter(F.col("consumer") == consumer)
        .agg(F.max("seq").alias("seq"))
        .collect()[0]
    )
    return int(row["seq"] or 0)


def write_watermark(spark: SparkSession, paths: LakePaths, consumer: str, seq: int) -> None:
    """Record that `consumer` has processed its source up to `seq` (written last, after the
    data: a crash before it makes the next run redo work that the merges make idempotent)."""
    frame = spark.createDataFrame(
        [(consumer, int(seq), int(time.time() * 1000))],
        "consumer string, seq long, updated_ms long",
    )
    append(frame, paths.state)


def record_changes(
    spark: SparkSession, paths: LakePaths, seq: int, partitions: Iterable[tuple[Any, str]]
) -> None:
    """Record the (event_date, factory_id) partitions silver changed in run `seq` (for gold)."""
    rows = [(int(seq), event_date, factory_id) for event_date, factory_id in set(partitions)]
    if rows:
        frame = spark.createDataFrame(rows, "seq long, event_date date, factory_id string")
        append(frame, paths.changes)


def read_changes(spark: SparkSession, paths: LakePaths, after_seq: int) -> list[Any]:
    """(event_date, factory_id, max seq) of the partitions silver changed after `after_seq`."""
    if not table_exists(spark, paths.changes):
        return []
    return (
        read_table(spark, paths.changes)
        .filter(F.col("seq") > after_seq)
        .groupBy("event_date", "factory_id")
        .agg(F.max("seq").alias("seq"))
        .collect()
    )


# ------------------------------------------------------------------------- landing manifest


def landed_window_start(spark: SparkSession, paths: LakePaths, lateness_ms: int) -> int | None:
    """Where the next listing starts: `lateness_ms` before the newest arrival hour the manifest
    holds (None: no manifest yet, list everything)."""
    if not table_exists(spark, paths.landed):
        return None
    row = read_table(spark, paths.landed).agg(F.max("hour_ms").alias("top")).collect()[0]
    return None if row["top"] is None else int(row["top"]) - lateness_ms


def read_landed_manifest(
    spark: SparkSession, paths: LakePaths, since_ms: int | None
) -> dict[str, tuple[int, int]]:
    """(size, modified_ms) by path of the files bronze has read, in the listing's window."""
    if not table_exists(spark, paths.landed):
        return {}
    manifest = read_table(spark, paths.landed)
    if since_ms is not None:
        manifest = manifest.filter(F.col("hour_ms").isNull() | (F.col("hour_ms") >= since_ms))
    return {
        row["path"]: (int(row["size"]), int(row["modified_ms"]))
        for row in manifest.select("path", "size", "modified_ms").collect()
    }


def record_landed(
    spark: SparkSession, paths: LakePaths, objects: Sequence[LandedObject], ingest_seq: int
) -> None:
    """Record the files bronze has read (after bronze's append: a crash in between makes the
    next run read them again, and their content digests make that a no-op)."""
    if not objects:
        return
    rows = [
        (item.path, item.size, item.modified_ms, item.hour_ms, int(ingest_seq)) for item in objects
    ]
    frame = spark.createDataFrame(
        rows, "path string, size long, modified_ms long, hour_ms long, ingest_seq long"
    )
    append(frame, paths.landed)


# ------------------------------------------------------------------------------ maintenance


def maintenance_statements(uri: str, *, retention_hours: int, spectrum: bool) -> list[str]:
    """The Spark SQL (Apache Spark + delta-spark, e.g. EMR Serverless) that maintains a table."""
    table = f"delta.`{uri}`"
    statements = []
    if spectrum:
        statements.append(
            f"ALTER TABLE {table} SET TBLPROPERTIES ("
            "'delta.enableDeletionVectors' = 'false', "
            "'delta.compatibility.symlinkFormatManifest.enabled' = 'true')"
        )
    statements.append(f"OPTIMIZE {table}")
    statements.append(f"VACUUM {table} RETAIN {int(retention_hours)} HOURS")
    if spectrum:
        statements.append(f"GENERATE symlink_format_manifest FOR TABLE {table}")
    return statements


def register_partitions_statement(table: str) -> str:
    """`MSCK REPAIR TABLE` for a catalog table (`database.table`) over a symlink manifest: adds
    the partitions whose manifest folders exist and the catalog lacks. Redshift Spectrum and
    Athena read only registered partitions; on EMR the catalog is the Glue Data Catalog."""
    parts = table.split(".")
    if len(parts) != 2 or not all(part.replace("_", "").isalnum() for part in parts):
        raise ValueError(f"catalog table {table!r}: expected database.table (letters, digits, _)")
    database, name = parts
    return f"MSCK REPAIR TABLE `{database}`.`{name}` ADD PARTITIONS"


@dataclass
class MaintenanceResult:
    table: str
    version: int
    files_before: int
    files_after: int
    files_vacuumed: int
    manifests: int


def maintain_local(
    uri: str, *, retention_hours: int, spectrum: bool, enforce_retention: bool = True
) -> MaintenanceResult:
    """Compact, vacuum and (for Spectrum tables) disable deletion vectors and write symlink
    manifests, with delta-rs."""
    from deltalake import DeltaTable

    table = DeltaTable(uri)
    files_before = len(table.file_uris())
    if spectrum:
        _set_properties(table, SPECTRUM_PROPERTIES)
    table.optimize.compact(writer_properties=zstd_writer_properties())
    table = DeltaTable(uri)
    vacuumed = table.vacuum(
        retention_hours=retention_hours,
        dry_run=False,
        enforce_retention_duration=enforce_retention,
    )
    table = DeltaTable(uri)
    manifests = write_symlink_manifests(table, uri) if spectrum else 0
    return MaintenanceResult(
        uri, table.version(), files_before, len(table.file_uris()), len(vacuumed), manifests
    )


def _set_properties(table: Any, properties: dict[str, str]) -> None:
    current = table.metadata().configuration
    missing = {k: v for k, v in properties.items() if current.get(k) != v}
    if missing:
        table.alter.set_table_properties(missing, raise_if_not_exists=False)


def write_symlink_manifests(table: Any, uri: str) -> int:
    """`_symlink_format_manifest/<partition>/manifest` files listing each partition's current
    data files, the layout `GENERATE symlink_format_manifest` writes (what Spectrum reads)."""
    base = str(local_path(uri))
    root = local_path(uri) / "_symlink_format_manifest"
    by_partition: dict[str, list[str]] = {}
    for file_uri in sorted(table.file_uris()):
        relative = file_uri[len(base) :].lstrip("/") if file_uri.startswith(base) else file_uri
        partition = "/".join(part for part in relative.split("/")[:-1] if "=" in part)
        by_partition.setdefault(partition, []).append(
            file_uri if "://" in file_uri else "file://" + file_uri
        )
    if root.exists():
        for old in sorted(root.rglob("manifest"), reverse=True):
            old.unlink()
    for partition, files in by_partition.items():
        folder = root / partition if partition else root
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest").write_text("\n".join(files) + "\n")
    return len(by_partition)


# ------------------------------------------------------------------------------ inspection


@dataclass
class TableSummary:
    name: str
    uri: str
    exists: bool
    version: int | None = None
    rows: int | None = None
    files: int | None = None
    partition_columns: tuple[str, ...] = ()
    bytes: int | None = None  # of the current data files


def describe_tables(paths: LakePaths) -> list[TableSummary]:
    """Version, row count and files of every table, read with delta-rs (no engine needed)."""
    from deltalake import DeltaTable

    summaries = []
    for name, uri in paths.tables().items():
        if not DeltaTable.is_deltatable(uri):
            summaries.append(TableSummary(name, uri, False))
            continue
        table = DeltaTable(uri)
        actions = table.get_add_actions(flatten=True)
        rows = sum(int(n) for n in _column(actions, "num_records") if n)
        size = sum(int(n) for n in _column(actions, "size_bytes") if n)
        summaries.append(
            TableSummary(
                name,
                uri,
                True,
                table.version(),
                rows,
                len(table.file_uris()),
                tuple(table.metadata().partition_columns),
                size,
            )
        )
    return summaries


def _column(batch: Any, name: str) -> list[Any]:
    import pyarrow as pa

    return list(pa.table(batch).column(name).to_pylist())


def quarantine_summary(paths: LakePaths) -> list[tuple[str, int, str]]:
    """(field, count, one example reason) per rejected field, most common first (delta-rs)."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(paths.quarantine):
        return []
    table = DeltaTable(paths.quarantine).to_pyarrow_table(columns=["reason_field", "reason"])
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for field, reason in zip(
        table.column("reason_field").to_pylist(), table.column("reason").to_pylist(), strict=True
    ):
        counts[field] = counts.get(field, 0) + 1
        examples.setdefault(field, reason)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(field, count, examples[field]) for field, count in ranked]


def read_arrow(uri: str, columns: Sequence[str] | None = None) -> Any:
    """A whole Delta table as an Arrow table through delta-rs (tests and small reports)."""
    from deltalake import DeltaTable

    return DeltaTable(uri).to_pyarrow_table(columns=list(columns) if columns else None)


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)
