"""EMR Serverless entry point: `spark-submit spark_jobs/main.py --job all --lake-root s3://...`.

On EMR the job runs on the session EMR creates (Apache Spark with delta-spark; see the README
for the Spark properties; the application's image, spark_jobs/container/Dockerfile, holds
Python 3.11 with `iiot` and `spark_jobs`). Locally,
`--engine sail` starts the embedded Sail server instead, so the same command runs on a laptop.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

JOBS = ("bronze", "silver", "gold", "all", "maintain", "maintenance")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spark_jobs.main", description=__doc__)
    parser.add_argument("--job", choices=JOBS, required=True)
    parser.add_argument("--lake-root", required=True, help="s3://bucket/prefix or file:///dir")
    parser.add_argument(
        "--engine",
        choices=("spark", "sail"),
        default="spark",
        help="spark: the session of the cluster (EMR); sail: start Sail in this process",
    )
    parser.add_argument("--retention-hours", type=int, default=168)
    parser.add_argument(
        "--full-listing",
        action="store_true",
        help="bronze: list every landing prefix, not only the last 25 hours' (a sweep)",
    )
    parser.add_argument(
        "--catalog-tables",
        default="",
        help="maintain: comma-separated database.table catalog tables over the symlink "
        "manifests whose new partitions to register (the Glue tables Spectrum reads)",
    )
    return parser.parse_args(argv)


def run(
    spark: object,
    job: str,
    lake_root: str,
    retention_hours: int,
    catalog_tables: Sequence[str] = (),
    full_listing: bool = False,
) -> list[dict[str, object]]:
    """Run one job (or all) on `spark`; return each job's figures."""
    from iiot.catalog import load_catalog
    from spark_jobs import io, jobs, maintenance
    from spark_jobs.transforms import derived_metrics, quality_rules

    paths = io.LakePaths.from_root(lake_root)
    rules = quality_rules(load_catalog())
    if job == "maintenance":  # the CMMS records: silver and gold machine_day_kpis
        return [maintenance.run_maintenance(spark, paths).figures()]  # type: ignore[arg-type]
    if job == "maintain":
        for uri in [*paths.tables().values(), *maintenance.MaintenancePaths.of(paths).tables()]:
            if not io.table_exists(spark, uri):  # type: ignore[arg-type]
                continue
            spectrum = uri in (
                paths.silver,
                paths.machine_daily,
                paths.factory_daily,
                *maintenance.MaintenancePaths.of(paths).spectrum_tables(),
            )
            for statement in io.maintenance_statements(
                uri, retention_hours=retention_hours, spectrum=spectrum
            ):
                spark.sql(statement).collect()  # type: ignore[attr-defined]
        # After the manifests: a new day or factory is a new partition folder to register.
        for table in catalog_tables:
            spark.sql(io.register_partitions_statement(table)).collect()  # type: ignore[attr-defined]
        return [
            {
                "job": "maintain",
                "tables": len(paths.tables()),
                "catalog_tables_repaired": len(catalog_tables),
            }
        ]
    steps = {
        "bronze": lambda: [
            jobs.run_bronze(spark, paths, full_listing=full_listing)  # type: ignore[arg-type]
        ],
        "silver": lambda: [jobs.run_silver(spark, paths, rules)],  # type: ignore[arg-type]
        "gold": lambda: [
            jobs.run_gold(spark, paths, derived=derived_metrics(rules))  # type: ignore[arg-type]
        ],
        "all": lambda: jobs.run_all(spark, paths, rules, full_listing=full_listing),  # type: ignore[arg-type]
    }
    return [result.figures() for result in steps[job]()]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tables = [name.strip() for name in args.catalog_tables.split(",") if name.strip()]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.engine == "sail":
        from spark_jobs.engine import sail_session

        with sail_session() as spark:
            figures = run(
                spark, args.job, args.lake_root, args.retention_hours, tables, args.full_listing
            )
    else:
        from pyspark.sql import SparkSession

        from spark_jobs.io import SPARK_CONF

        spark = SparkSession.builder.appName(f"iiot-lake-{args.job}").getOrCreate()
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        for key, value in SPARK_CONF.items():  # ZSTD Parquet, merges included
            spark.conf.set(key, value)
        figures = run(
            spark, args.job, args.lake_root, args.retention_hours, tables, args.full_listing
        )
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
