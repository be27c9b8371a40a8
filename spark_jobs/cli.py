"""`iiot lake`: build, maintain and inspect the local Delta lake (Sail, embedded).

pyspark, pysail and deltalake are imported inside the commands so that `iiot --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="The Delta lake: bronze -> silver -> gold on Sail, maintenance, inspection.",
    no_args_is_help=True,
)
stdout = Console()
stderr = Console(stderr=True)

RootOption = Annotated[
    Path, typer.Option("--root", help="Lake root directory (landing/ holds the raw batches).")
]


@app.command("run")
def run(
    root: RootOption = Path(".demo/lake"),
    job: Annotated[
        str,
        typer.Option(
            help="bronze, silver, gold or all; maintenance: the CMMS records under "
            "ROOT/maintenance_landing -> silver and gold machine_day_kpis."
        ),
    ] = "all",
    last_n: Annotated[int, typer.Option(min=2, help="Rolling window in readings.")] = 100,
    sigma: Annotated[float, typer.Option(min=0.0, help="Anomaly threshold in sigmas.")] = 3.0,
    full_listing: Annotated[
        bool,
        typer.Option(
            "--full-listing",
            help="List every landing prefix, not only the last 25 hours' (a sweep).",
        ),
    ] = False,
) -> None:
    """Run bronze -> silver -> gold (or one job) on the raw batches landed under ROOT/landing."""
    from iiot.catalog import load_catalog
    from spark_jobs import io, jobs
    from spark_jobs.engine import sail_session
    from spark_jobs.transforms import derived_metrics, quality_rules

    if job not in ("bronze", "silver", "gold", "all", "maintenance"):
        stderr.print(
            f"[bold red]error:[/] unknown job {job!r}: use bronze, silver, gold, all or maintenance"
        )
        raise typer.Exit(2)
    if job == "maintenance":
        from spark_jobs.maintenance import run_maintenance

        with sail_session() as spark:
            done = run_maintenance(spark, io.LakePaths.from_root(root))
        stdout.print_json(data=done.figures())
        return
    paths = io.LakePaths.from_root(root)
    rules = quality_rules(load_catalog())
    settings = jobs.LakeSettings(last_n=last_n, sigma=sigma)

    def progress(message: str) -> None:
        stderr.print(f"[dim]{message}[/]", highlight=False)

    with sail_session() as spark:
        if job == "all":
            results = jobs.run_all(
                spark, paths, rules, settings=settings, progress=progress, full_listing=full_listing
            )
        elif job == "bronze":
            results = [jobs.run_bronze(spark, paths, progress=progress, full_listing=full_listing)]
        elif job == "silver":
            results = [jobs.run_silver(spark, paths, rules, settings=settings, progress=progress)]
        else:
            results = [
                jobs.run_gold(spark, paths, progress=progress, derived=derived_metrics(rules))
            ]
    table = Table("job", "new rows", "quarantined", "duplicates", "partitions", "seconds")
    for r in results:
        table.add_row(
            r.job,
            str(r.rows_written),
            str(r.quarantined),
            str(r.duplicates),
            str(r.partitions),
            f"{r.seconds:.2f}",
        )
    stdout.print(table)
    for r in results:
        if r.skipped:
            stdout.print(f"{r.job}: {r.skipped}", highlight=False)
        for name, value in r.extra.items():
            stdout.print(f"{r.job}: {name}: {value}", highlight=False)


@app.command("maintain")
def maintain(
    root: RootOption = Path(".demo/lake"),
    retention_hours: Annotated[
        int, typer.Option(min=0, help="Keep files younger than this for time travel.")
    ] = 168,
) -> None:
    """Compact and vacuum every table; Spectrum tables (silver readings, gold) also get no
    deletion vectors and fresh symlink manifests. Uses delta-rs (Sail cannot run OPTIMIZE)."""
    from spark_jobs import io

    paths = io.LakePaths.from_root(root)
    spectrum = {paths.silver, paths.machine_daily, paths.factory_daily}
    table = Table("table", "version", "files before", "files after", "vacuumed", "manifests")
    for name, summary in ((t.name, t) for t in io.describe_tables(paths)):
        if not summary.exists:
            continue
        result = io.maintain_local(
            summary.uri,
            retention_hours=retention_hours,
            spectrum=summary.uri in spectrum,
            enforce_retention=retention_hours >= 168,
        )
        table.add_row(
            name,
            str(result.version),
            str(result.files_before),
            str(result.files_after),
            str(result.files_vacuumed),
            str(result.manifests),
        )
    stdout.print(table)


@app.command("show")
def show(root: RootOption = Path(".demo/lake")) -> None:
    """Tables with their versions, row counts and files, and the quarantine's reasons."""
    from spark_jobs import io

    paths = io.LakePaths.from_root(root)
    table = Table("table", "version", "rows", "files", "partitioned by", title=paths.root)
    for summary in io.describe_tables(paths):
        if not summary.exists:
            table.add_row(summary.name, "-", "-", "-", "(not created yet)")
            continue
        table.add_row(
            summary.name,
            str(summary.version),
            f"{summary.rows:,}",
            str(summary.files),
            ", ".join(summary.partition_columns),
        )
    stdout.print(table)
    reasons = io.quarantine_summary(paths)
    if reasons:
        quarantine = Table("field", "rejects", "example reason", title="quarantine")
        for field, count, example in reasons:
            quarantine.add_row(field, str(count), example)
        stdout.print(quarantine)
