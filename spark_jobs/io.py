"""Every read and write of the lake: Delta tables, landed raw files and the jobs' watermarks.

Table locations derive from one lake root (`file:///...` locally, `s3://bucket/prefix` in
production). Spark does the data I/O on every engine (Sail locally, Apache Spark + delta-spark on
EMR Serverless); table maintenance (compaction, vacuum, table properties, symlink manifests) uses
delta-rs (`deltalake`) locally, because Sail does not parse `OPTIMIZE`/`VACUUM`, and the
equivalent Spark SQL in production (`maintenance_statements`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812  (the PySpark convention)

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
        }

    @property
    def is_local(self) -> bool:
        return self.root.startswith("file://")


def local_path(uri: str) -> Path:
    """The filesystem path of a `file://` URI."""
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


# ------------------------------------------------------------------------------ landed files


def read_landed(spark: SparkSession, landing_uri: str) -> DataFrame | None:
    """The landed raw files (path, content), or None when nothing has landed yet.

    Locally the files are listed here and named to the engine one by one: Sail infers
    partitions from `key=value` folders even with `recursiveFileLookup`, and fails the whole
    read when Firehose's `date=.../hour=...` folders sit next to any other (`json/`, or one
    stray file); and it leaves out empty files, which Spark reads (as empty content, which
    silver quarantines: every landed object is accounted for). Hidden files (`.` or `_`:
    partial writes) are skipped, as Spark does.
    """
    reader = spark.read.format("binaryFile")
    if not landing_uri.startswith("file://"):
        return (
            reader.option("recursiveFileLookup", "true").load(landing_uri).select("path", "content")
        )
    folder = local_path(landing_uri)
    files = sorted(
        path
        for path in (folder.rglob("*") if folder.is_dir() else [])
        if path.is_file() and not _hidden(path.relative_to(folder))
    )
    sized = [path.as_uri() for path in files if path.stat().st_size]
    empty = [(path.as_uri(), b"") for path in files if not path.stat().st_size]
    frames = [reader.load(sized).select("path", "content")] if sized else []
    if empty:
        frames.append(spark.createDataFrame(empty, "path string, content binary"))
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])


def _hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


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
    """Append rows (creating the table on first write)."""
    writer = frame.write.format("delta").mode("append")
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
    table.optimize.compact()
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


def describe_tables(paths: LakePaths) -> list[TableSummary]:
    """Version, row count and files of every table, read with delta-rs (no engine needed)."""
    from deltalake import DeltaTable

    summaries = []
    for name, uri in paths.tables().items():
        if not DeltaTable.is_deltatable(uri):
            summaries.append(TableSummary(name, uri, False))
            continue
        table = DeltaTable(uri)
        rows = sum(int(n) for n in _column(table.get_add_actions(flatten=True), "num_records") if n)
        summaries.append(
            TableSummary(
                name,
                uri,
                True,
                table.version(),
                rows,
                len(table.file_uris()),
                tuple(table.metadata().partition_columns),
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
