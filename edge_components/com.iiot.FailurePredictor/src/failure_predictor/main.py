"""Wiring: configuration -> model handle -> predictor -> transport (IPC on Greengrass).

Run by the recipe as ``python3 -m failure_predictor.main``; ``--mqtt HOST:PORT --config FILE``
runs the same logic against a plain MQTT broker for local tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from pathlib import Path
from typing import Any

from failure_predictor.config import PredictorConfig
from failure_predictor.messages import MAINTENANCE, SHUTDOWN_CONFIRMATIONS, topic
from failure_predictor.model_loader import ModelHandle
from failure_predictor.predictor import FailurePredictor
from failure_predictor.transport import Transport
from iiot import logs, topics
from iiot.catalog import load_catalog

log = logging.getLogger("failure_predictor")
CLOUD_TOPICS = frozenset({topics.ANOMALIES})


def build(config: PredictorConfig, transport: Transport) -> FailurePredictor:
    def publish(name: str, payload: bytes) -> None:
        if name in CLOUD_TOPICS:
            transport.publish_cloud(name, payload)
        else:
            transport.publish_local(name, payload)

    predictor = FailurePredictor(
        config, ModelHandle(Path(config.model_dir)), publish, load_catalog()
    )
    readings = topics.readings_topic(config.factory_id)
    confirmations = topic(SHUTDOWN_CONFIRMATIONS, config.factory_id)
    maintenance = topic(MAINTENANCE, config.factory_id)

    def on_message(name: str, payload: bytes) -> None:
        if name == confirmations:
            predictor.on_confirmation(payload)
        elif name == maintenance:
            predictor.on_maintenance(payload)
        else:
            predictor.on_payload(payload)

    transport.start((readings, confirmations, maintenance), on_message)
    return predictor


def run(config: PredictorConfig, transport: Transport, stop: threading.Event) -> None:
    predictor = build(config, transport)
    try:
        while not stop.wait(config.model_poll_seconds):
            predictor.refresh_model()
    finally:
        transport.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FailurePredictor Greengrass component")
    parser.add_argument("--mqtt", help="HOST:PORT of a plain MQTT broker instead of IPC")
    parser.add_argument("--config", type=Path, help="JSON configuration (with --mqtt)")
    args = parser.parse_args(argv)
    logs.configure("INFO", json_format=True)
    raw: dict[str, Any]
    transport: Transport
    if args.mqtt:
        from failure_predictor.transport_mqtt import MqttTransport

        host, _, port = args.mqtt.partition(":")
        raw = json.loads(args.config.read_text()) if args.config else {}
        transport = MqttTransport(host, int(port or 1883))
    else:
        from failure_predictor.transport_ipc import IpcTransport, read_component_configuration

        raw = read_component_configuration()
        transport = IpcTransport()
    run(PredictorConfig.from_mapping(raw), transport, threading.Event())


if __name__ == "__main__":
    main()
