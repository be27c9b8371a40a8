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
from kda_sql.calibration import (
    MARGIN,
    MIN_READINGS,
    QUANTILE,
    Calibration,
    learn_from_run,
    learn_from_silver,
)
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


CalibrationOption = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        help="Rapid-change limits learned by `iiot stream calibrate` (default: the catalog's).",
    ),
]


def _calibration(path: Path | None) -> Calibration | None:
    if path is None:
        return None
    try:
        return Calibration.load(path)
    except ValueError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc


@app.command()
def calibrate(
    data: Annotated[
        Path | None, typer.Option(help="Run directory (or silver export) to learn from.")
    ] = None,
    silver: Annotated[
        Path | None,
        typer.Option(
            help="Or the lake's silver folder: its Delta tables readings, failures and "
            "maintenance_records."
        ),
    ] = None,
    until_ms: Annotated[
        int | None, typer.Option(help="With --silver: only readings before this time (ms).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Calibration JSON to write.")] = Path(
        "rapid_change_limits.json"
    ),
    catalog: CatalogOption = None,
    quantile: Annotated[float, typer.Option(help="Quantile of the normal windows.")] = QUANTILE,
    margin: Annotated[float, typer.Option(help="Limit = margin x that quantile.")] = MARGIN,
    min_readings: Annotated[
        int, typer.Option(help="Readings a window must hold: it widens for slow sampling.")
    ] = MIN_READINGS,
    horizon_hours: Annotated[
        float, typer.Option(help="Hours before each failure that are not normal.")
    ] = 24.0,
) -> None:
    """Learn each series' rapid-change limit and window from its normal operation."""
    metric_catalog = _catalog(catalog)
    if (data is None) == (silver is None):
        stderr.print("[bold red]error:[/] give --data or --silver (one of them)", highlight=False)
        raise typer.Exit(2)
    source = data if data is not None else silver
    assert source is not None
    if not source.exists():
        stderr.print(f"[bold red]error:[/] {source}: no such folder", highlight=False)
        raise typer.Exit(1)
    settings: dict[str, float] = {
        "quantile": quantile,
        "margin": margin,
        "min_readings": min_readings,
    }
    horizon_ms = int(horizon_hours * 3_600_000)
    try:
        if silver is not None:
            calibration = learn_from_silver(
                silver, metric_catalog, horizon_ms=horizon_ms, until_ms=until_ms, **settings
            )
        else:
            calibration = learn_from_run(source, metric_catalog, horizon_ms=horizon_ms, **settings)
    except (FileNotFoundError, ValueError) as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    calibration.save(out)
    windows = sorted({s.window_seconds for s in calibration.series})
    stdout.print(
        f"{len(calibration.series)} series calibrated (windows {windows} s) -> {out}",
        highlight=False,
    )


@app.command()
def render(
    catalog: CatalogOption = None,
    out: Annotated[Path, typer.Option(help="Where to write the SQL files.")] = RENDERED_DIR,
    check: Annotated[
        bool, typer.Option("--check", help="Only report whether the files are up to date.")
    ] = False,
    calibration: CalibrationOption = None,
) -> None:
    """Render the SQL rules from the catalog (kda_sql/templates -> kda_sql/sql), with learned
    rapid-change limits when a calibration is given (then --out must name another folder)."""
    metric_catalog = _catalog(catalog)
    learned = _calibration(calibration)
    if learned is not None:
        if out.resolve() == RENDERED_DIR.resolve():
            stderr.print(
                "[bold red]error:[/] kda_sql/sql is the catalog's rendering: pass --out for "
                "the calibrated SQL",
                highlight=False,
            )
            raise typer.Exit(1)
        for path in write_rendered(metric_catalog, out, learned):
            stdout.print(str(path))
        return
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
    calibration: CalibrationOption = None,
) -> None:
    """Run the rendered rules over local readings on PyFlink (creates .venv-flink once)."""
    import tempfile

    from kda_sql.flink_env import FlinkEnvError, run_rules

    if not readings.exists():
        stderr.print(f"[bold red]error:[/] {readings}: no such file or folder", highlight=False)
        raise typer.Exit(1)
    learned = _calibration(calibration)
    sql_dir = None
    if learned is not None:
        sql_dir = Path(tempfile.mkdtemp(prefix="iiot-rules-"))
        write_rendered(load_catalog(), sql_dir, learned)
    try:
        run = run_rules(
            readings.resolve(),
            out.resolve(),
            sql_dir=sql_dir,
            extra_properties={
                "window.slide.seconds": str(slide_seconds),
                "watermark.delay.seconds": str(watermark_delay_seconds),
            },
        )
    except FlinkEnvError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    stdout.print(f"{len(run.output_lines)} anomalies in {run.seconds:.1f} s -> {out}")
