"""Entry points: Greengrass (the recipe's Run step) and local runs against an MQTT broker.

``python -m opcua_collector`` without arguments runs under Greengrass: configuration from the
nucleus (a bad update is refused with the reasons before it is applied; an applied one restarts
the collector in-process with it) and readings published on Greengrass local pub/sub, where the
SensorBuffer subscribes to them. ``python -m opcua_collector run --broker mqtt://HOST:PORT
--config FILE`` runs the same collector against an MQTT broker (the SensorBuffer's local
broker), e.g. on a laptop next to a PLC, or in the tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from edge_runtime.run import run_until_signalled
from iiot import logs
from iiot.catalog import CatalogError, MetricCatalog, load_catalog
from opcua_collector.collector import OpcUaCollector
from opcua_collector.config import CollectorConfig, ConfigError, from_mapping

log = logging.getLogger("opcua_collector")
LOG_LEVEL_ENV = "OPCUA_COLLECTOR_LOG_LEVEL"
PASSWORD_ENV = "OPCUA_COLLECTOR_MQTT_PASSWORD"  # noqa: S105 - the variable's name
USAGE = (
    "usage: python -m opcua_collector              (under Greengrass)\n"
    "       python -m opcua_collector run --config FILE [--broker URL] ...  (run --help)"
)


def gateway_config(raw: dict[str, Any], catalog: MetricCatalog) -> CollectorConfig:
    """The component configuration on a gateway: factoryId defaults to the thing name (also
    when the nucleus left `{iot:thingName}` uninterpolated)."""
    if raw.get("factoryId") == "{iot:thingName}":
        raw = {**raw, "factoryId": ""}
    return from_mapping(raw, catalog, factory_id=os.environ.get("AWS_IOT_THING_NAME", ""))


def validation_problem(raw: dict[str, Any], catalog: MetricCatalog) -> str | None:
    """Why a configuration update must be refused, or None (the deployment reports it)."""
    try:
        gateway_config(raw, catalog)
    except ConfigError as exc:
        return str(exc)
    return None


def greengrass() -> None:
    from edge_runtime.ipc import ConfigurationWatch, IpcTransport, read_component_configuration

    catalog = load_catalog()

    def collector() -> OpcUaCollector:
        config = gateway_config(read_component_configuration(), catalog)
        return OpcUaCollector(config, IpcTransport(), catalog)

    run_until_signalled(
        collector,
        watch=lambda on_change: ConfigurationWatch(
            lambda raw: validation_problem(raw, catalog), on_change
        ),
    )


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m opcua_collector run",
        description="Run the OPC UA collector against an MQTT broker until SIGTERM/Ctrl-C.",
    )
    parser.add_argument("--config", type=Path, required=True, help="YAML or JSON configuration")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="the local broker")
    parser.add_argument("--factory", help="factory id (default: the configuration's factoryId)")
    parser.add_argument("--client-id", help="MQTT client id prefix")
    parser.add_argument("--username", help="username on the broker")
    parser.add_argument(
        "--password-file", type=Path, help=f"first line: the broker password (or {PASSWORD_ENV})"
    )
    parser.add_argument("--ca-file", type=Path, help="CA of the broker (mqtts:// URLs)")
    parser.add_argument("--cert-file", type=Path, help="client certificate")
    parser.add_argument("--key-file", type=Path, help="private key of --cert-file")
    parser.add_argument("--catalog", type=Path, help="metric catalog YAML")
    args = parser.parse_args(argv)

    from edge_runtime.mqtt import MqttSecurity, MqttTransport, parse_broker

    try:
        catalog = load_catalog(args.catalog)
        raw = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{args.config}: the configuration must be a mapping of its keys")
        if args.factory:
            raw = {**raw, "factoryId": args.factory}
        config = from_mapping(raw, catalog)
        password = None
        if args.password_file is not None:
            password = args.password_file.read_text().splitlines()[0]
        security = MqttSecurity(
            username=args.username,
            password=password or os.environ.get(PASSWORD_ENV) or None,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
        )
        problems = security.problems(parse_broker(args.broker))
        if problems:
            raise ValueError("; ".join(problems))
    except (CatalogError, ConfigError, ValueError, OSError, yaml.YAMLError) as exc:
        parser.exit(2, f"error: {exc}\n")
    client_id = args.client_id or f"opcua-collector-{config.factory_id}"
    run_until_signalled(
        lambda: OpcUaCollector(
            config,
            MqttTransport(
                args.broker, None, client_id, security=security, persistent_session=False
            ),
            catalog,
        )
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logs.configure(os.environ.get(LOG_LEVEL_ENV, "INFO"))
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # its INFO is per request
    if not argv:
        greengrass()
    elif argv[0] == "run":
        run(argv[1:])
    elif argv[0] in ("-h", "--help"):
        print(USAGE)
    else:
        print(f"error: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
