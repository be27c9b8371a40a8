"""`iiot stream`: render the Flink SQL rules from the catalog and run them locally on PyFlink.

PyFlink is never imported here (the project's environment does not have it): local runs go
through `kda_sql.flink_env`, which runs the job in `.venv-flink`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from iiot.catalog import CatalogError, load_catalog
from kda_sql.generate import RENDERED_DIR, rule_summaries, stale_files, write_rendered

app = typer.Typer(
    help="Flink SQL stream rules: render them from the metric catalog, run them locally.",
    no_args_is_help=True,
)
stdout = Console()
stderr = Console(stderr=True)

CatalogOption = Annotated[
    Path | None, typer.Option("--catalog", help="Metric catalog YAML (default: the project's).")
]


def _catalog(path: Path | None):  # type: ignore[no-untyped-def]
    try:
        return load_catalog(path)
    except CatalogError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc


@app.command()
def render(
    catalog: CatalogOption = None,
    out: Annotated[Path, typer.Option(help="Where to write the SQL files.")] = RENDERED_DIR,
    check: Annotated[
        bool, typer.Option("--check", help="Only report whether the files are up to date.")
    ] = False,
) -> None:
    """Render the SQL rules from the catalog (kda_sql/templates -> kda_sql/sql)."""
    metric_catalog = _catalog(catalog)
    if check:
        stale = stale_files(metric_catalog, out)
        if stale:
            stderr.print(
                f"[bold red]error:[/] out of date: {', '.join(stale)}; run `iiot stream render`",
                highlight=False,
            )
            raise typer.Exit(1)
        stdout.print(f"{out} is up to date with the catalog")
        return
    for path in write_rendered(metric_catalog, out):
        stdout.print(str(path))


@app.command()
def rules(catalog: CatalogOption = None) -> None:
    """List the rules the SQL applies and the catalog entry each comes from."""
    table = Table("rule", "metric", "condition", "catalog source")
    for rule in rule_summaries(_catalog(catalog)):
        table.add_row(rule.rule, rule.metric, rule.condition, rule.catalog_source)
    stdout.print(table)


@app.command("run-local")
def run_local(
    readings: Annotated[Path, typer.Argument(help="JSON-lines readings file or folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the anomalies (JSON lines).")] = Path(
        ".demo/stream/anomalies"
    ),
    slide_seconds: Annotated[int, typer.Option(help="HOP window slide.")] = 10,
    watermark_delay_seconds: Annotated[int, typer.Option(help="Allowed out-of-orderness.")] = 5,
) -> None:
    """Run the rendered rules over local readings on PyFlink (creates .venv-flink once)."""
    from kda_sql.flink_env import FlinkEnvError, run_rules

    if not readings.exists():
        stderr.print(f"[bold red]error:[/] {readings}: no such file or folder", highlight=False)
        raise typer.Exit(1)
    try:
        run = run_rules(
            readings.resolve(),
            out.resolve(),
            extra_properties={
                "window.slide.seconds": str(slide_seconds),
                "watermark.delay.seconds": str(watermark_delay_seconds),
            },
        )
    except FlinkEnvError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    stdout.print(f"{len(run.output_lines)} anomalies in {run.seconds:.1f} s -> {out}")
