"""`iiot edge ...`: run the SensorBuffer outside Greengrass (local broker, local data dir)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from iiot.catalog import CatalogError, load_catalog

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
    client_id: Annotated[str | None, typer.Option(help="MQTT client id prefix.")] = None,
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
    catalog: Annotated[Path | None, typer.Option(help="Metric catalog YAML.")] = None,
) -> None:
    """Run the component against MQTT brokers until SIGTERM/Ctrl-C."""
    from sensor_buffer.config import BufferConfig, ConfigError
    from sensor_buffer.main import SensorBuffer, run_until_signalled
    from sensor_buffer.transport_mqtt import MqttTransport, parse_broker

    try:
        metrics = load_catalog(catalog)
        parse_broker(broker)
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
        )
    except (CatalogError, ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    transport = MqttTransport(
        broker, cloud_broker, client_id or f"sensor-buffer-{factory}-{gateway}"
    )
    run_until_signalled(SensorBuffer(config, transport, metrics))
