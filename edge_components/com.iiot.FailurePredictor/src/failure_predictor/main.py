"""Wiring: configuration -> model handle -> predictor -> transport (IPC on Greengrass).

Run by the recipe as ``python3 -m failure_predictor.main``: configuration and transport from
Greengrass IPC, in the shared run loop (`edge_runtime.run`: SIGTERM stops it; a validated
configuration update restarts it). ``--mqtt mqtt://HOST:PORT --config FILE`` runs the same
logic against an MQTT broker (`edge_runtime.mqtt`) for local runs and tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edge_runtime.run import run_until_signalled
from edge_runtime.transport import Ack, Transport
from failure_predictor.config import ConfigError, PredictorConfig
from failure_predictor.messages import MAINTENANCE, SHUTDOWN_CONFIRMATIONS, topic
from failure_predictor.model_loader import AnomalyModelHandle, ModelHandle
from failure_predictor.predictor import FailurePredictor
from iiot import logs, topics
from iiot.catalog import load_catalog

log = logging.getLogger("failure_predictor")
CLOUD_TOPICS = frozenset({topics.ANOMALIES})


def build(config: PredictorConfig, transport: Transport) -> FailurePredictor:
    """The predictor, subscribed through `transport` to readings, confirmations and
    maintenance events."""

    def publish(name: str, payload: bytes) -> None:
        if name in CLOUD_TOPICS:
            # QoS 1 without waiting for the PUBACK (the predictor keeps no outbox): a publish
            # that fails is logged, not retried. The cloud topic is the configured one (each
            # environment has its own).
            cloud = config.anomalies_topic
            transport.publish_cloud(cloud, payload).add_done_callback(_log_failure(cloud))
        else:
            transport.publish_local(name, payload)

    anomaly_models = (
        AnomalyModelHandle(Path(config.anomaly_model_dir)) if config.anomaly_model_dir else None
    )
    predictor = FailurePredictor(
        config,
        ModelHandle(Path(config.model_dir)),
        publish,
        load_catalog(),
        anomaly_models=anomaly_models,
    )
    readings = topics.readings_topic(config.factory_id)
    confirmations = topic(SHUTDOWN_CONFIRMATIONS, config.factory_id)
    maintenance = topic(MAINTENANCE, config.factory_id)

    def on_message(name: str, payload: bytes, ack: Ack | None) -> None:
        # The predictor's state is in memory: a message is done once handled.
        try:
            if name == confirmations:
                predictor.on_confirmation(payload)
            elif name == maintenance:
                predictor.on_maintenance(payload)
            else:
                predictor.on_payload(payload)
        finally:
            if ack is not None:
                ack()

    transport.start((readings, confirmations, maintenance), on_message)
    return predictor


def _log_failure(name: str) -> Callable[[Future[None]], None]:
    def done(future: Future[None]) -> None:
        error = future.exception()
        if error is not None:
            log.warning("cloud publish failed", extra={"topic": name, "error": str(error)})

    return done


class PredictorComponent:
    """The predictor on its transport, plus a thread that swaps in new model versions."""

    def __init__(self, config: PredictorConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self.predictor: FailurePredictor | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        predictor = self.predictor = build(self.config, self.transport)

        def poll_model() -> None:
            while not self._stop.wait(self.config.model_poll_seconds):
                predictor.refresh_model()
                predictor.refresh_anomaly_model()

        self._thread = threading.Thread(target=poll_model, name="failure-model-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.transport.stop()


def validation_problem(raw: dict[str, Any]) -> str | None:
    """Why a configuration update must be refused, or None (the deployment reports it)."""
    try:
        PredictorConfig.from_mapping(raw)
    except ConfigError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FailurePredictor Greengrass component")
    parser.add_argument(
        "--mqtt", help="an MQTT broker instead of IPC: mqtt://HOST:PORT (or HOST:PORT)"
    )
    parser.add_argument("--config", type=Path, help="JSON configuration (with --mqtt)")
    args = parser.parse_args(argv)
    logs.configure("INFO", json_format=True)
    if args.mqtt:
        from edge_runtime.mqtt import MqttTransport, parse_broker

        broker = args.mqtt if "://" in args.mqtt else f"mqtt://{args.mqtt}"
        try:
            parse_broker(broker)
        except ValueError as exc:
            parser.error(str(exc))

        def local() -> PredictorComponent:
            raw = json.loads(args.config.read_text()) if args.config else {}
            config = PredictorConfig.from_mapping(raw)
            # A clean session per run: the predictor's state does not outlive the process.
            client_id = f"failure-predictor-{config.factory_id}-{secrets.token_hex(8)}"
            transport = MqttTransport(broker, None, client_id, persistent_session=False)
            return PredictorComponent(config, transport)

        run_until_signalled(local)
        return
    from edge_runtime.ipc import ConfigurationWatch, IpcTransport, read_component_configuration

    def on_gateway() -> PredictorComponent:
        config = PredictorConfig.from_mapping(read_component_configuration())
        return PredictorComponent(config, IpcTransport())

    run_until_signalled(
        on_gateway,
        watch=lambda on_change: ConfigurationWatch(validation_problem, on_change),
    )


if __name__ == "__main__":
    main()
