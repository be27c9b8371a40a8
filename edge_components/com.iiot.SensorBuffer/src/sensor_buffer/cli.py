"""`iiot edge ...` (or `python -m sensor_buffer ...`): run the SensorBuffer outside Greengrass
(local broker, local data dir)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from iiot.catalog import CatalogError, load_catalog

PASSWORD_ENV = "SENSOR_BUFFER_MQTT_PASSWORD"  # noqa: S105 - the variable's name, not a password

app = typer.Typer(
    help="The gateway's SensorBuffer component (store-and-forward, thresholds, uploads).",
    no_args_is_help=True,
)


@app.callback()
def edge() -> None:
    """The gateway's SensorBuffer component (store-and-forward, thresholds, uploads)."""


@app.command()
def run(
    factory: Annotated[str, typer.Option(help="Factory id (input topic factory/F/readings).")],
    broker: Annotated[
        str, typer.Option(help="Local broker for readings and alerts.")
    ] = "mqtt://127.0.0.1:1883",
    data_dir: Annotated[Path, typer.Option(help="Where the SQLite buffer lives.")] = Path(
        ".sensor-buffer"
    ),
    cloud_broker: Annotated[
        str | None, typer.Option(help="Broker standing in for IoT Core (default: --broker).")
    ] = None,
    gateway: Annotated[str, typer.Option(help="Gateway id (producer of the batches).")] = "gateway",
    client_id: Annotated[
        str | None,
        typer.Option(
            help="MQTT client id prefix (default sensor-buffer-FACTORY-GATEWAY); a random "
            "suffix kept in the data directory makes the id unguessable."
        ),
    ] = None,
    username: Annotated[
        str | None, typer.Option(help="Username on the local broker (and the cloud one).")
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(
            help=f"File whose first line is the broker password (or set {PASSWORD_ENV}); "
            "never on the command line."
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA certificate of the broker (mqtts:// URLs).")
    ] = None,
    cert_file: Annotated[
        Path | None, typer.Option(help="Client certificate, for brokers that require one.")
    ] = None,
    key_file: Annotated[Path | None, typer.Option(help="Private key of --cert-file.")] = None,
    full_policy: Annotated[
        str, typer.Option(help="reject_new, drop_oldest or downsample_oldest.")
    ] = "drop_oldest",
    max_disk_bytes: Annotated[int, typer.Option(help="Disk cap for unsent data.")] = 8 * 1024**3,
    retention_days: Annotated[float, typer.Option(help="Keep unsent data this long.")] = 7.0,
    commit_interval_ms: Annotated[float, typer.Option(help="Group commit interval.")] = 5.0,
    batch_linger_ms: Annotated[
        float, typer.Option(help="Wait this long to fill a batch.")
    ] = 1000.0,
    max_publishes_per_s: Annotated[float, typer.Option(help="Upload publish rate cap.")] = 80.0,
    max_bytes_per_s: Annotated[float, typer.Option(help="Upload bandwidth cap.")] = 400 * 1024,
    health_interval_s: Annotated[float, typer.Option(help="Status period.")] = 30.0,
    backoff_max_s: Annotated[float, typer.Option(help="Longest retry delay.")] = 30.0,
    store_predictions: Annotated[
        bool,
        typer.Option(
            help="Store the failure predictor's predictions (factory/F/predictions) as the "
            "derived series failure_probability."
        ),
    ] = True,
    prediction_deadband: Annotated[
        float, typer.Option(help="Store a probability once it moved by this much.")
    ] = 0.01,
    prediction_max_interval_s: Annotated[
        float, typer.Option(help="...or once this long (event time) passed since the last.")
    ] = 300.0,
    catalog: Annotated[Path | None, typer.Option(help="Metric catalog YAML.")] = None,
) -> None:
    """Run the component against MQTT brokers until SIGTERM/Ctrl-C."""
    from edge_runtime.mqtt import MqttSecurity, MqttTransport, parse_broker, session_client_id
    from edge_runtime.run import run_until_signalled
    from sensor_buffer.config import BufferConfig, ConfigError
    from sensor_buffer.main import SensorBuffer

    try:
        metrics = load_catalog(catalog)
        security = MqttSecurity(
            username=username,
            password=_password(password_file),
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
        problems = security.problems(parse_broker(broker))
        if problems:
            raise ValueError("; ".join(problems))
        if cloud_broker:
            parse_broker(cloud_broker)
        config = BufferConfig(
            factory_id=factory,
            gateway_id=gateway,
            data_dir=data_dir,
            full_policy=full_policy,  # type: ignore[arg-type]
            max_disk_bytes=max_disk_bytes,
            retention_days=retention_days,
            commit_interval_ms=commit_interval_ms,
            batch_linger_ms=batch_linger_ms,
            max_publishes_per_s=max_publishes_per_s,
            max_bytes_per_s=max_bytes_per_s,
            health_interval_s=health_interval_s,
            backoff_max_s=backoff_max_s,
            store_predictions=store_predictions,
            prediction_deadband=prediction_deadband,
            prediction_max_interval_s=prediction_max_interval_s,
        )
    except (CatalogError, ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    transport = MqttTransport(
        broker,
        cloud_broker,
        session_client_id(data_dir, client_id or f"sensor-buffer-{factory}-{gateway}"),
        security=security,
    )
    run_until_signalled(lambda: SensorBuffer(config, transport, metrics))


def _password(path: Path | None) -> str | None:
    """The broker password from --password-file, else the environment, else None."""
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"--password-file {path}: cannot be read ({exc.strerror})") from exc
        if not lines or not lines[0]:
            raise ValueError(f"--password-file {path}: the first line is empty")
        return lines[0]
    return os.environ.get(PASSWORD_ENV) or None
