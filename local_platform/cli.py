"""The `iiot` command line.

Conventions: `--help` on every command, progress on stderr for long work, results on stdout,
errors on stderr with exit code 1 (bad input or failed work) or 2 (wrong usage).
Each part of the platform adds its own command group (`iiot edge`, `iiot lake`, `iiot ml`,
`iiot stream`) from a module of its own; a group appears once its module exists.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from iiot import logs
from iiot.catalog import CatalogError, MetricCatalog, load_catalog
from iiot.contract import Validator
from local_platform.simulator import DEFAULT_START, FleetConfig, FleetSimulator, write_simulation

app = typer.Typer(
    name="iiot",
    help="Edge-to-cloud industrial IoT platform: simulate, validate, and run every part locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
catalog_app = typer.Typer(help="Inspect and check the metric catalog.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

stdout = Console()
stderr = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr and return the exit to raise."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    )


@app.callback()
def main_options(
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
    log_json: Annotated[bool, typer.Option(help="Structured JSON logs on stderr.")] = True,
) -> None:
    logs.configure(log_level, json_format=log_json)


def _parse_start(value: str) -> datetime:
    try:
        start = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r} is not an ISO-8601 time such as 2026-01-05T00:00Z"
        ) from exc
    if start.tzinfo is None:
        raise typer.BadParameter(f"{value!r} has no time zone; add Z for UTC")
    return start


@app.command()
def simulate(
    out: Annotated[Path | None, typer.Option(help="Directory for the output files.")] = None,
    factories: Annotated[int, typer.Option(min=1, help="Number of factories.")] = 2,
    machines: Annotated[int, typer.Option(min=1, help="Machines per factory.")] = 10,
    hours: Annotated[float, typer.Option(min=0.001, help="Simulated duration.")] = 24.0,
    interval_ms: Annotated[int, typer.Option(help="Sampling interval per sensor.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same output.")] = 0,
    start: Annotated[
        str, typer.Option(help="Start time, ISO-8601 with zone.")
    ] = DEFAULT_START.isoformat(),
    fmt: Annotated[
        str, typer.Option("--format", help="Comma-separated: parquet, jsonl.")
    ] = "parquet,jsonl",
    malformed_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of malformed JSON payloads.")
    ] = 0.001,
    mtbf_hours: Annotated[float, typer.Option(min=1.0, help="Mean time between failures.")] = 120.0,
    publish: Annotated[
        str | None, typer.Option(help="Publish to a broker instead, e.g. mqtt://127.0.0.1:1883.")
    ] = None,
    rate: Annotated[
        float, typer.Option(min=0.0, help="Readings/s when publishing; 0 = max.")
    ] = 0.0,
    catalog: Annotated[Path | None, typer.Option(help="Metric catalog YAML.")] = None,
) -> None:
    """Simulate a factory fleet: readings, failures and maintenance records.

    Writes readings.parquet and readings.jsonl (the case study's JSON, with malformed payloads
    mixed in), failures.csv, maintenance_records.csv, machines.csv and manifest.json to --out,
    or publishes the readings to an MQTT broker with --publish.
    """
    if (out is None) == (publish is None):
        raise fail("give exactly one of --out DIR or --publish mqtt://HOST:PORT", 2)
    try:
        config = FleetConfig(
            factories=factories,
            machines_per_factory=machines,
            start=_parse_start(start),
            hours=hours,
            interval_ms=interval_ms,
            seed=seed,
            malformed_rate=malformed_rate,
            mtbf_hours=mtbf_hours,
        )
        simulator = FleetSimulator(config, load_catalog(catalog))
    except (ValueError, CatalogError) as exc:
        raise fail(str(exc), 2) from exc
    if publish is not None:
        from local_platform.publisher import publish as publish_readings

        with progress_bar() as bar:
            task = bar.add_task("publishing", total=config.expected_readings)
            try:
                summary = publish_readings(
                    simulator.chunks(),
                    publish,
                    rate=rate,
                    malformed_rate=malformed_rate,
                    seed=seed,
                    on_message=lambda n: bar.advance(task, n),
                )
            except (OSError, ValueError) as exc:
                raise fail(f"cannot publish to {publish}: {exc}") from exc
        stdout.print(
            f"published {summary.readings} readings in {summary.messages} messages "
            f"({summary.malformed} malformed) in {summary.seconds:.1f} s"
        )
        return
    assert out is not None
    formats = tuple(part.strip() for part in fmt.split(",") if part.strip())
    with progress_bar() as bar:
        task = bar.add_task("simulating", total=simulator.chunk_count)
        try:
            result = write_simulation(
                simulator, out, formats=formats, on_chunk=lambda _n: bar.advance(task)
            )
        except ValueError as exc:
            raise fail(str(exc), 2) from exc
    stdout.print(
        f"wrote {result.readings:,} readings from {config.machines} machines "
        f"({result.failures} failures, {result.maintenance} maintenance jobs) to {out}"
    )
    stdout.print(f"generated {result.readings_per_second:,.0f} readings per second")
    malformed = sum(result.malformed.values())
    if "jsonl" in formats:
        stdout.print(f"malformed JSON payloads mixed in: {malformed}")


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="JSON, JSON-lines or compact batch files.")],
    catalog: Annotated[Path | None, typer.Option(help="Metric catalog YAML.")] = None,
    quarantine: Annotated[
        Path | None, typer.Option(help="Write rejects here as JSON lines with their reasons.")
    ] = None,
) -> None:
    """Validate payload files against the reading contract; exit 1 when anything is rejected.

    A .jsonl file is one payload per line; a .json file is one payload; any other file is read
    as one compact batch.
    """
    from iiot.wire import validate_payload

    try:
        validator = Validator(load_catalog(catalog))
    except CatalogError as exc:
        raise fail(str(exc), 2) from exc
    accepted = 0
    reasons: Counter[str] = Counter()
    sink = quarantine.open("w") if quarantine else None
    try:
        for path in files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise fail(f"{path}: {exc.strerror}", 2) from exc
            payloads = data.splitlines() if path.suffix == ".jsonl" else [data]
            for line_number, payload in enumerate(payloads, start=1):
                if not payload.strip():
                    continue
                outcome = validate_payload(payload, validator)
                accepted += outcome.accepted
                for reject in outcome.rejects:
                    reasons[reject.reason] += 1
                    if sink:
                        record = {
                            "file": str(path),
                            "line": line_number,
                            "index": reject.index,
                            "reason": reject.reason,
                            "payload": reject.payload.decode("utf-8", "replace"),
                        }
                        sink.write(json.dumps(record) + "\n")
    finally:
        if sink:
            sink.close()
    stdout.print(f"accepted {accepted} readings, rejected {sum(reasons.values())}")
    if reasons:
        table = Table("rejects", "reason")
        for reason, count in reasons.most_common(20):
            table.add_row(str(count), reason)
        stdout.print(table)
        raise typer.Exit(1)


def _catalog_or_exit(path: Path | None) -> MetricCatalog:
    try:
        return load_catalog(path)
    except CatalogError as exc:
        raise fail(str(exc)) from exc


@catalog_app.command("show")
def catalog_show(
    path: Annotated[
        Path | None, typer.Argument(help="Catalog YAML; default config/metrics.yaml.")
    ] = None,
) -> None:
    """Print the catalog's metrics, units, ranges and thresholds."""
    catalog = _catalog_or_exit(path)
    table = Table(
        "metric",
        "unit",
        "valid range",
        "edge min/max (hyst., debounce)",
        "stream warn/crit",
        "rapid change",
        title=f"{catalog.source} (digest {catalog.digest})",
    )

    def shown(limit: float | None) -> str:
        return "-" if limit is None else f"{limit:g}"

    for name, metric in catalog.measured.items():
        edge, stream, rapid = metric.edge, metric.stream, metric.rapid_change
        table.add_row(
            name,
            metric.unit,
            f"[{metric.valid_range.min:g}, {metric.valid_range.max:g}]",
            f"{shown(edge.min)} / {shown(edge.max)} ({edge.hysteresis:g}, {edge.debounce})",
            f"{stream.warning:g} / {stream.critical:g}" if stream else "-",
            f"stddev > {rapid.stddev_limit:g} over {rapid.window_seconds} s" if rapid else "-",
        )
    stdout.print(table)
    for name, metric in catalog.derived.items():
        stdout.print(
            f"derived: {name} ({metric.unit}, [{metric.valid_range.min:g}, "
            f"{metric.valid_range.max:g}]) from {metric.derived}; no threshold or stream rule, "
            "never a model feature"
        )


@catalog_app.command("check")
def catalog_check(
    path: Annotated[
        Path | None, typer.Argument(help="Catalog YAML; default config/metrics.yaml.")
    ] = None,
) -> None:
    """Check a catalog file; exit 1 with the problems when it is invalid."""
    catalog = _catalog_or_exit(path)
    stdout.print(f"{catalog.source}: {len(catalog)} metrics, valid (digest {catalog.digest})")


@app.command()
def cost(
    env: Annotated[str, typer.Option("--env", help="dev, staging or prod.")] = "prod",
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout instead.")] = False,
    prices: Annotated[
        Path | None, typer.Option(help="Price file; default config/prices.yaml.")
    ] = None,
    idle: Annotated[
        bool,
        typer.Option(help="What the environment costs left running with no workload at all."),
    ] = False,
) -> None:
    """Monthly AWS cost of an environment by service, from its configuration and workload.

    With --idle: deployed as configured, but no gateway, no reading and no query (what an
    environment costs to leave running).

    Unit prices come from config/prices.yaml (region, date, source and status of each); the
    prices not confirmed on their source page are listed after the table. Compares with the
    case study's bill.
    """
    from local_platform.report.cost import (
        PRICES_PATH,
        PriceError,
        cost_table,
        estimate_environment,
        summary_lines,
    )

    if env not in ("dev", "staging", "prod"):
        raise fail(f"--env must be dev, staging or prod, not {env!r}", 2)
    if idle:
        _idle_cost(env, prices or PRICES_PATH, as_json)
        return
    try:
        deployed = estimate_environment(env, prices or PRICES_PATH)
    except (PriceError, ValueError) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        stdout.print_json(json.dumps(deployed.to_dict()))
        return
    stdout.print(cost_table(deployed))
    for line in summary_lines(deployed) + deployed.capacity_warnings:
        stdout.print(line, highlight=False)
    unchecked = ", ".join(f"{p['price']} ({p['status']})" for p in deployed.prices_to_check)
    stdout.print(f"Prices not confirmed on their source page: {unchecked}", highlight=False)


def _idle_cost(env: str, prices: Path, as_json: bool) -> None:
    from local_platform.report.cost import (
        IDLE_NOT_BILLED,
        PriceError,
        cost_table,
        estimate_environment_idle,
    )

    try:
        idle = estimate_environment_idle(env, prices)
    except (PriceError, ValueError) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        figures = idle.to_dict()
        figures["not_billed_when_idle"] = IDLE_NOT_BILLED
        stdout.print_json(json.dumps(figures))
        return
    stdout.print(cost_table(idle))
    stdout.print(f"{env} idle: ${idle.total:,.0f}/month. Not billed: {IDLE_NOT_BILLED}.")
    unchecked = ", ".join(f"{p['price']} ({p['status']})" for p in idle.prices_to_check)
    stdout.print(f"Prices not confirmed on their source page: {unchecked}", highlight=False)


@app.command()
def smoke(
    env: Annotated[str, typer.Option("--env", help="dev, staging or prod.")],
    region: Annotated[
        str | None, typer.Option(help="The environment's region (default: the profile's).")
    ] = None,
    role_arn: Annotated[
        str | None,
        typer.Option(help="Assume this role first (the pipeline: arn:...:role/iiot-<env>-smoke)."),
    ] = None,
    outputs: Annotated[
        Path | None,
        typer.Option(help="JSON file of the stack outputs instead of reading the stacks."),
    ] = None,
    iot_endpoint: Annotated[
        str | None,
        typer.Option(help="mqtt://host:port to publish to instead of the account's IoT Core."),
    ] = None,
    influx_url: Annotated[
        str | None, typer.Option(help="Query InfluxDB here instead of the outputs' InfluxUrl.")
    ] = None,
    local_lake: Annotated[
        Path | None,
        typer.Option(help="Run the lake job locally on this root instead of the state machine."),
    ] = None,
    influx_via: Annotated[
        str | None,
        typer.Option(
            help="probe: invoke the environment's InfluxDB probe Lambda (its VPC); direct: "
            "query InfluxDB from here. Default: probe when the outputs name one."
        ),
    ] = None,
    skip: Annotated[
        list[str] | None, typer.Option(help="Leave out a step (publish, influx, lake, ml).")
    ] = None,
    wait_ml: Annotated[
        bool, typer.Option(help="Wait for the training pipeline to succeed, not just start.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds each step may take.", min=1)] = 900.0,
    poll: Annotated[float, typer.Option(help="Seconds between checks.", min=0.1)] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout instead.")] = False,
) -> None:
    """Post-deploy smoke tests: a tagged test batch through IoT Core, found in InfluxDB and
    (after a lake run started here) in silver; the training pipeline started.

    Reads the resources from the outputs of the `iiot-<env>-smoke`, `-lake` and `-timeseries`
    stacks. Exit 0 when every step passed, 1 when one failed (stderr names the step and why),
    2 on wrong usage or when the checks cannot start. Details: local_platform/smoke.py,
    docs/deploy.md.
    """
    import boto3

    from local_platform import smoke as checks

    if env not in ("dev", "staging", "prod"):
        raise fail(f"--env must be dev, staging or prod, not {env!r}", 2)
    if influx_via not in (None, "probe", "direct"):
        raise fail(f"--influx-via must be probe or direct, not {influx_via!r}", 2)
    unknown = sorted(set(skip or []) - set(checks.STEPS))
    if unknown:
        raise fail(f"--skip {unknown}: the steps are {', '.join(checks.STEPS)}", 2)
    try:
        session = boto3.Session(region_name=region)
        if role_arn:
            answer = session.client("sts").assume_role(
                RoleArn=role_arn, RoleSessionName=f"iiot-smoke-{env}"
            )["Credentials"]
            session = boto3.Session(
                aws_access_key_id=answer["AccessKeyId"],
                aws_secret_access_key=answer["SecretAccessKey"],
                aws_session_token=answer["SessionToken"],
                region_name=session.region_name,
            )
        if outputs is not None:
            values = json.loads(outputs.read_text())
        else:
            values = checks.environment_outputs(session.client("cloudformation"), env)
        targets = checks.SmokeTargets.from_outputs(values)
        if iot_endpoint is not None:
            url = iot_endpoint
        else:
            endpoint = session.client("iot").describe_endpoint(endpointType="iot:Data-ATS")
            credentials = session.get_credentials()
            if credentials is None:
                raise checks.SmokeError("no AWS credentials: set a profile or --role-arn")
            url = checks.iot_websocket_url(
                endpoint["endpointAddress"], session.region_name, credentials
            )
        influx_counter: checks.InfluxCounter
        if influx_via == "probe" or (influx_via is None and targets.influx_probe_function):
            if not targets.influx_probe_function:
                raise checks.SmokeError("--influx-via probe: the outputs name no SmokeInfluxProbe")
            influx_counter = checks.LambdaProbe(
                session.client("lambda"), targets.influx_probe_function
            )
        else:
            influx_counter = checks.DirectInflux(
                influx_url or targets.influx_url,
                session.client("secretsmanager"),
                targets.influx_secret_arn,
            )
        lake: checks.LakeRunner
        if local_lake is not None:
            lake = checks.LocalLake(local_lake, local_lake.parent / "smoke-logs")
        else:
            lake = checks.StepFunctionsLake(
                session.client("stepfunctions"), targets.lake_state_machine_arn, poll_s=poll
            )
        run = checks.Smoke(
            targets=targets,
            catalog=load_catalog(),
            publisher=checks.MqttPublisher(url, f"{targets.smoke_client_prefix}{os.getpid()}"),
            lake=lake,
            influx_counter=influx_counter,
            sagemaker=session.client("sagemaker"),
            storage_options=checks.s3_storage_options(session),
            step_timeout_s=timeout,
            poll_s=poll,
            wait_ml=wait_ml,
            # One line per message, unwrapped: the pipeline's log is read by people and greps.
            progress=lambda message: stderr.print(
                f"smoke {env}: {message}", highlight=False, soft_wrap=True
            ),
        )
    except (checks.SmokeError, ValueError, OSError) as exc:
        raise fail(str(exc), 2) from exc
    except Exception as exc:  # botocore: no credentials, access denied, unknown endpoint
        raise fail(f"cannot start the smoke tests: {type(exc).__name__}: {exc}", 2) from exc
    report = run.run(tuple(skip or ()))
    if as_json:
        stdout.print_json(json.dumps(report.as_dict()))
    else:
        table = Table(title=f"iiot smoke --env {env}: run {report.run_id}")
        for column in ("step", "result", "what it found", "s"):
            table.add_column(column, overflow="fold")
        for result in report.results:
            table.add_row(
                result.step, "ok" if result.ok else "FAILED", result.found, f"{result.seconds:.1f}"
            )
        stdout.print(table)
    failed = [result for result in report.results if not result.ok]
    if failed:
        for result in failed:
            stderr.print(
                f"[bold red]error:[/] step {result.step}: {result.found}",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(1)


@app.command()
def report(
    run: Annotated[Path, typer.Option("--run", help="The run directory.")] = Path(".demo"),
    out: Annotated[
        Path | None, typer.Option(help="The HTML file; default RUN/report.html.")
    ] = None,
) -> None:
    """Write the fleet report of a run: one self-contained HTML file (offline, no CDN).

    Fleet overview, the oil-pump case study's four panels per factory and machine, reliability
    KPIs, the risk ranking and maintenance plan, the downtime what-if, data-path health and
    cost per machine; a panel whose input the run lacks says so.
    """
    from local_platform.report.html import write_report

    if not run.is_dir():
        raise fail(f"{run} is not a directory (give a run directory, e.g. .demo)", 2)
    try:
        path = write_report(run, out)
    except OSError as exc:
        raise fail(f"cannot write the report: {exc}") from exc
    stdout.print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False)


@app.command()
def whatif(
    run: Annotated[Path, typer.Option("--run", help="The run directory.")] = Path(".demo"),
    days: Annotated[float, typer.Option(min=0.1, help="Simulated days after the run.")] = 7.0,
    history_days: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Days the fleet runs before those DAYS, to failure in both arms and not "
            "counted, as the gateways' predictors had been running (it moves the window's "
            "failures: another fleet).",
        ),
    ] = 0.0,
) -> None:
    """Downtime what-if: the run's fleet for DAYS more, twice, seeded identically.

    Run-to-failure against acting on the failure predictor's alerts (the run's model,
    ml/failure_model) with a planned job at the next shift change; writes RUN/whatif/whatif.json
    (the report shows it) and prints the downtime reduction against the extra maintenance and
    the ceiling (a planner that knew every failure time).
    """
    from local_platform.report.whatif import write_whatif

    try:
        path = write_whatif(run, days, history_days=history_days)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from exc
    figures = json.loads(path.read_text())
    rtf, pred = figures["run_to_failure"], figures["predictive"]
    stdout.print(f"{figures['fleet']}", highlight=False)
    stdout.print(
        f"run to failure: {rtf['failures']} failures, {rtf['downtime_h']:.1f} h down; acting on "
        f"alerts: {pred['failures']} failures, {pred['unplanned_h']:.1f} h unplanned + "
        f"{pred['planned_h']:.1f} h planned ({pred['planned_jobs']} jobs, {pred['averted']} "
        f"averted a failure, {pred['false_alarm_jobs']} found nothing)",
        highlight=False,
    )
    stdout.print(
        f"downtime reduction {figures['downtime_reduction']:.1%} (unplanned "
        f"{figures['unplanned_reduction']:.0%}; a planner that knew every failure time: "
        f"{figures['ceiling_reduction']:.1%}); the case study claims 50%. Written to {path}",
        highlight=False,
    )


@app.command()
def dashboards(
    out: Annotated[
        Path | None, typer.Option(help="Where to write them; default dashboards/.")
    ] = None,
) -> None:
    """Generate the Grafana dashboards (JSON) from the metric catalog.

    Pumps (the case study's four panels over Timestream for InfluxDB) and fleet risk with the
    warehouse's reliability KPIs, for Amazon Managed Grafana.
    """
    from local_platform.report.grafana import DASHBOARDS_DIR, write_dashboards

    try:
        written = write_dashboards(out or DASHBOARDS_DIR)
    except (OSError, CatalogError) as exc:
        raise fail(str(exc)) from exc
    for path in written:
        stdout.print(f"wrote {path}", highlight=False)


@app.command()
def demo(
    work_dir: Annotated[Path, typer.Option(help="Where the run writes its files.")] = Path(".demo"),
    factories: Annotated[int, typer.Option(min=1)] = 2,
    machines: Annotated[int, typer.Option(min=1, help="Machines per factory.")] = 10,
    hours: Annotated[float, typer.Option(min=0.01, help="Simulated live hours.")] = 24.0,
    interval_ms: Annotated[int, typer.Option()] = 10_000,
    seed: Annotated[int, typer.Option()] = 1,
    readings_per_s: Annotated[
        float, typer.Option(min=1.0, help="Sensor readings per wall second (sets the speed).")
    ] = 20_000.0,
    history_hours: Annotated[
        int, typer.Option(min=0, help="Hours of the fleet's past in the lake before the run.")
    ] = 72,
    faults: Annotated[
        bool, typer.Option(help="Inject the faults (uplink outage, gateway kill, InfluxDB stop).")
    ] = True,
    model_lifecycle: Annotated[
        bool,
        typer.Option(
            help="Train a FailureModel from the lake before the run and again mid-run, publish "
            "it and let the gateways' predictors swap it in."
        ),
    ] = True,
    fleet_report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report",
            help="Write the fleet report (report.html) into the run directory.",
        ),
    ] = True,
    step: Annotated[
        list[str] | None,
        typer.Option(
            "--step",
            "--steps",
            help="Run these separate steps instead of the connected platform (repeatable): "
            "simulate, contract, lake, stream, edge, ml.",
        ),
    ] = None,
) -> None:
    """Run the connected platform locally: sensors -> gateways -> cloud -> lake -> model -> back
    to the gateways, through faults; print the reconciliation and exit 1 if anything does not
    reconcile. With --step, run the parts' separate steps instead."""
    if step:
        _demo_steps(work_dir, factories, machines, hours, interval_ms, seed, step)
        return
    from local_platform.connected.plan import Faults, Plan
    from local_platform.connected.runner import RunFailedError, run

    try:
        plan = Plan(
            work_dir=work_dir.resolve(),
            factories=factories,
            machines_per_factory=machines,
            hours=hours,
            interval_ms=interval_ms,
            seed=seed,
            readings_per_s=readings_per_s,
            history_hours=history_hours,
            faults=Faults(enabled=faults),
            model_lifecycle=model_lifecycle,
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    stderr.print(
        f"connected run: {factories} factories x {machines} machines, {hours:g} h live "
        f"({plan.fleet.expected_readings * hours / (hours + history_hours):,.0f} readings) at "
        f"{plan.speed:,.0f}x ({readings_per_s:,.0f} readings/s), {history_hours} h of history",
        highlight=False,
    )
    with progress_bar() as bar:
        tasks: dict[str, Any] = {}

        def report(description: str, done: float, total: float) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=done, total=total)

        try:
            document = run(plan, report)
        except RunFailedError as exc:
            raise fail(str(exc)) from exc
    _print_reconciliation(document, work_dir)
    if fleet_report:
        # Written whether or not the run reconciles: the report shows which check failed.
        from local_platform.report.html import write_report

        with stderr.status("writing the fleet report"):
            path = write_report(work_dir)
        stdout.print(f"fleet report: {path.resolve()}", highlight=False)
    if not document["ok"]:
        raise fail(f"the run does not reconcile: {', '.join(document['failed'])}")


def _print_reconciliation(document: dict[str, Any], work_dir: Path) -> None:
    table = Table("check", "left", "right", "", title="reconciliation", title_justify="left")
    for check in document["checks"]:
        mark = "[green]ok[/]" if check["ok"] else "[bold red]FAILED[/]"
        table.add_row(check["check"], _short(check["left"]), _short(check["right"]), mark)
    stdout.print(table)
    quality = document.get("alert_quality")
    if quality:
        stdout.print(_alert_quality_line(quality), highlight=False)
    stdout.print(
        f"{'reconciled' if document['ok'] else 'NOT reconciled'} in {document['seconds']} s; "
        f"figures in {work_dir}/reconciliation.json and {work_dir}/figures.json"
    )


def _alert_quality_line(quality: dict[str, Any]) -> str:
    """The alerts' worth: precision (alerts a failure of the machine followed within the
    horizon) and failures alerted, per alert type, for the notifications people received (the
    headline) and for every RAISED anomaly at the router (`raw_anomalies`: the detectors' own
    precision, repeats and shelved start-up transients included);
    local_platform/connected/alert_quality.py says why both."""

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    def figures(part: dict[str, Any], what: str) -> str:
        types = ", ".join(
            f"{kind} {entry['alerts']} at {share(entry['precision'])}"
            for kind, entry in sorted(
                part.get("by_type", {}).items(), key=lambda item: -int(item[1]["alerts"])
            )
        )
        return (
            f"{share(part.get('alert_precision'))} "
            f"({part.get('alerts_followed_by_an_incident', 0)} of {part.get('alerts', 0)} "
            f"{what} followed by a failure within {quality.get('horizon_hours', 24):g} h); "
            f"failures alerted {part.get('failures_alerted', 0)}/{part.get('failures', 0)}"
            + (f"; by type: {types}" if types else "")
        )

    line = "alert precision " + figures(quality, "notifications")
    raw = quality.get("raw_anomalies")
    if raw:
        line += "\nraw anomaly precision " + figures(raw, "RAISED anomalies at the router")
    suppressed = quality.get("suppressed")
    if suppressed:
        line += "\nsuppressed by the router: " + ", ".join(
            f"{what} {count}" for what, count in suppressed.items()
        )
    return line


def _short(value: Any) -> str:
    return (
        json.dumps(value)
        if isinstance(value, dict | list)
        else f"{value:,}"
        if isinstance(value, int)
        else str(value)
    )


def _demo_steps(
    work_dir: Path,
    factories: int,
    machines: int,
    hours: float,
    interval_ms: int,
    seed: int,
    step: list[str],
) -> None:
    """The parts' separate steps (the demo before the connected run), each runnable alone."""
    from local_platform.demo import DemoContext, demo_steps, run_demo

    unknown = set(step) - {title for title, _ in demo_steps()}
    if unknown:
        raise fail(f"unknown step(s) {sorted(unknown)}: use {[t for t, _ in demo_steps()]}", 2)
    context = DemoContext(
        work_dir=work_dir,
        fleet=FleetConfig(
            factories=factories,
            machines_per_factory=machines,
            hours=hours,
            interval_ms=interval_ms,
            seed=seed,
        ),
        catalog=load_catalog(),
    )
    with progress_bar() as bar:
        tasks: dict[str, Any] = {}

        def report(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=done, total=total)

        context.progress = report
        results = run_demo(context, only=set(step))
    for title, figures in results.items():
        table = Table("figure", "value", title=title, title_justify="left")
        for name, value in figures.items():
            table.add_row(name, str(value))
        stdout.print(table)
    stdout.print(f"demo finished; files are under {work_dir}/")


def _register_groups() -> None:
    """Each part's own command group, registered by import (their modules import their heavy
    dependencies only inside the commands that need them)."""
    from sensor_buffer.cli import app as edge_app

    from kda_sql.cli import app as stream_app
    from ml_pipeline.cli import app as ml_app
    from spark_jobs.cli import app as lake_app

    for name, group in (
        ("edge", edge_app),
        ("lake", lake_app),
        ("ml", ml_app),
        ("stream", stream_app),
    ):
        app.add_typer(group, name=name)


def main() -> None:
    _register_groups()
    app(prog_name="iiot")


if __name__ == "__main__":
    main()
