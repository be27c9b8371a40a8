"""Wiring: configuration -> model handle -> predictor -> transport (IPC on Greengrass).

Run by the recipe as ``python3 -m failure_predictor.main``: configuration and transport from
Greengrass IPC, in the shared run loop (`edge_runtime.run`: SIGTERM stops it; a validated
configuration update restarts it). ``--mqtt mqtt://HOST:PORT --config FILE`` runs the same
logic against an MQTT broker (`edge_runtime.mqtt`) for local runs and tests.

Anomalies reach the cloud through a durable outbox (`edge_runtime.outbox`): each is committed
to a SQLite file in the work folder before it is published at QoS 1, deleted on its PUBACK, and
retried with backoff while the cloud is unreachable; after a restart (kill -9 included) what was
not acknowledged is sent again with the same anomaly id, which the cloud de-duplicates by.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

import msgspec

from edge_runtime.outbox import MEMORY, OutboxSender, SqliteOutbox
from edge_runtime.run import run_until_signalled
from edge_runtime.transport import Ack, Transport
from failure_predictor.config import ConfigError, PredictorConfig
from failure_predictor.messages import MAINTENANCE, SHUTDOWN_CONFIRMATIONS, topic
from failure_predictor.model_loader import AnomalyModelHandle, ModelHandle
from failure_predictor.predictor import FailurePredictor
from iiot import logs, topics
from iiot.anomaly import decode_anomaly
from iiot.catalog import load_catalog

log = logging.getLogger("failure_predictor")
CLOUD_TOPICS = frozenset({topics.ANOMALIES})
# The component's work folder (the recipe sets it to `{work:path}`): a relative outboxPath
# is in it.
WORK_DIR_ENV = "FAILURE_PREDICTOR_WORK_DIR"


def outbox_location(config: PredictorConfig, work_dir: str | None = None) -> str:
    """The outbox file: outboxPath, relative to the work folder; `:memory:` when it is empty
    or relative with no work folder known (a run outside Greengrass without one)."""
    work = work_dir if work_dir is not None else os.environ.get(WORK_DIR_ENV, "")
    path = config.outbox_path
    if path and Path(path).is_absolute():
        return path
    if path and work:
        return str(Path(work) / path)
    return MEMORY


def open_outbox(
    config: PredictorConfig, transport: Transport, work_dir: str | None = None
) -> OutboxSender:
    """The anomaly outbox and its sender to the configured cloud topic (not started)."""
    location = outbox_location(config, work_dir)
    if location == MEMORY:
        log.warning(
            "no work folder for the anomaly outbox: it is kept in memory, so anomalies not yet "
            f"acknowledged are lost if the process ends (set outboxPath or {WORK_DIR_ENV})",
            extra={"outbox_path": config.outbox_path},
        )
    outbox = SqliteOutbox(location, max_messages=config.outbox_max_anomalies)
    waiting = len(outbox)
    if waiting:
        log.info("anomalies waiting in the outbox from before", extra={"waiting": waiting})
    return OutboxSender(
        outbox,
        transport.publish_cloud,
        config.anomalies_topic,
        backoff_initial_s=config.backoff_initial_seconds,
        backoff_max_s=config.backoff_max_seconds,
        name="anomaly-outbox",
    )


def anomaly_key(payload: bytes) -> str:
    """The anomaly's stable id (what the cloud de-duplicates by); a payload that is not an
    anomaly message is keyed by its digest."""
    try:
        return decode_anomaly(payload).anomaly_id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return "sha256:" + hashlib.sha256(payload).hexdigest()[:32]


def build(
    config: PredictorConfig, transport: Transport, outbox: OutboxSender | None = None
) -> FailurePredictor:
    """The predictor, subscribed through `transport` to readings, confirmations and
    maintenance events; its anomalies go to the cloud through `outbox` (by default one from
    the configuration, whose retries then happen on the next anomaly only: start it)."""
    sender = outbox if outbox is not None else open_outbox(config, transport)

    def publish(name: str, payload: bytes) -> None:
        if name in CLOUD_TOPICS:
            # Committed to the outbox first, then published at QoS 1 to the configured topic
            # (each environment has its own); deleted on the PUBACK, retried until then.
            try:
                sender.submit(anomaly_key(payload), payload)
            except Exception:  # the outbox cannot be written (disk full, closed): best effort
                log.exception("anomaly outbox write failed; publishing without it")
                transport.publish_cloud(config.anomalies_topic, payload)
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


class PredictorComponent:
    """The predictor on its transport, a thread that swaps in new model versions, and the
    anomaly outbox's retry thread."""

    def __init__(
        self, config: PredictorConfig, transport: Transport, work_dir: str | None = None
    ) -> None:
        self.config = config
        self.transport = transport
        self.work_dir = work_dir
        self.predictor: FailurePredictor | None = None
        self.outbox: OutboxSender | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        outbox = self.outbox = open_outbox(self.config, self.transport, self.work_dir)
        predictor = self.predictor = build(self.config, self.transport, outbox)
        outbox.start()  # sends what an earlier run left unacknowledged, then retries

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
        if self.outbox is not None:
            self.outbox.stop()
        self.transport.stop()
        if self.outbox is not None:
            self.outbox.outbox.close()  # what is unacknowledged is sent by the next start


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
    parser.add_argument(
        "--cloud-mqtt",
        help="the cloud broker (IoT Core's stand-in) for anomalies; default: the --mqtt broker",
    )
    parser.add_argument(
        "--work-dir",
        help=f"the work folder a relative outboxPath is in (default: ${WORK_DIR_ENV})",
    )
    args = parser.parse_args(argv)
    logs.configure("INFO", json_format=True)
    if args.mqtt:
        from edge_runtime.mqtt import MqttTransport, parse_broker

        broker = args.mqtt if "://" in args.mqtt else f"mqtt://{args.mqtt}"
        cloud = None
        if args.cloud_mqtt:
            cloud = args.cloud_mqtt if "://" in args.cloud_mqtt else f"mqtt://{args.cloud_mqtt}"
        try:
            parse_broker(broker)
            if cloud:
                parse_broker(cloud)
        except ValueError as exc:
            parser.error(str(exc))

        def local() -> PredictorComponent:
            raw = json.loads(args.config.read_text()) if args.config else {}
            config = PredictorConfig.from_mapping(raw)
            # A clean session per run: the predictor's state does not outlive the process.
            client_id = f"failure-predictor-{config.factory_id}-{secrets.token_hex(8)}"
            transport = MqttTransport(broker, cloud, client_id, persistent_session=False)
            return PredictorComponent(config, transport, args.work_dir)

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
