"""Wiring: configuration -> model handle -> predictor -> transport (IPC on Greengrass).

Run by the recipe as ``python3 -m failure_predictor.main``: configuration and transport from
Greengrass IPC, in the shared run loop (`edge_runtime.run`: SIGTERM stops it; a validated
configuration update restarts it). ``--mqtt mqtt://HOST:PORT --config FILE`` runs the same
logic against an MQTT broker (`edge_runtime.mqtt`) for local runs and tests.

Anomalies reach the cloud through a durable outbox (`edge_runtime.outbox`): each is committed
to a SQLite file in the work folder before it is published at QoS 1, deleted on its PUBACK, and
retried with backoff while the cloud is unreachable; after a restart (kill -9 included) what was
not acknowledged is sent again with the same anomaly id, which the cloud de-duplicates by.

Predictions go to the local bus with a confirmation (`Transport.publish_local_confirmed`: MQTT
QoS 1, so the local broker holds each for the SensorBuffer's persistent session until the
buffer has committed it; on Greengrass the nucleus's reply); `LocalBusCounts` counts what was
handed over, confirmed and refused, and the readings payloads handled, which a local run uses
to know that every prediction the predictor made has reached the buffer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec

from edge_runtime.outbox import MEMORY, OutboxSender, SqliteOutbox
from edge_runtime.run import run_until_signalled
from edge_runtime.transport import Ack, MessageHandler, Transport
from failure_predictor.config import ConfigError, PredictorConfig
from failure_predictor.messages import MAINTENANCE, PREDICTIONS, SHUTDOWN_CONFIRMATIONS, topic
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


class _Version(msgspec.Struct):
    model_version: str = "?"


_version = msgspec.json.Decoder(_Version).decode
_REFUSED_LOG_EVERY_S = 60.0


class LocalBusCounts:
    """What the predictor handed to the local bus and what became of it, and the readings
    payloads it handled (thread-safe: the transport confirms on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.readings_payloads = 0
        self.readings_dropped = 0  # ... of them dropped unread: the input backlog was full
        self.published = 0  # predictions handed to the bus
        self.confirmed = 0  # ... that the bus took (the local broker's PUBACK)
        self.refused = 0  # ... that it did not take (not connected, refused, connection lost)
        self.confirmed_by_version: Counter[str] = Counter()
        self._refused_logged = 0
        self._refused_log_at = -math.inf  # the first refusal is logged at once

    def handled_readings(self) -> None:
        with self._lock:
            self.readings_payloads += 1

    def dropped_readings(self) -> int:
        """A readings payload dropped unread (counted as handled too); the total dropped."""
        with self._lock:
            self.readings_payloads += 1
            self.readings_dropped += 1
            return self.readings_dropped

    def publish_prediction(self, transport: Transport, name: str, payload: bytes) -> None:
        with self._lock:
            self.published += 1
        try:
            future = transport.publish_local_confirmed(name, payload)
        except Exception as exc:  # the transport raised instead of failing the future
            future = Future()
            future.set_exception(exc)
        future.add_done_callback(lambda done: self._settled(done, payload))

    def _settled(self, future: Future[None], payload: bytes) -> None:
        error = future.exception()
        if error is None:
            try:
                version = _version(payload).model_version
            except (msgspec.ValidationError, msgspec.DecodeError):
                version = "?"
            with self._lock:
                self.confirmed += 1
                self.confirmed_by_version[version] += 1
            return
        now = time.monotonic()
        with self._lock:
            self.refused += 1
            due = now - self._refused_log_at >= _REFUSED_LOG_EVERY_S
            if due:
                since, self._refused_logged = self.refused - self._refused_logged, self.refused
                self._refused_log_at = now
        if due:
            # Not retried: the next prediction (at most predictEverySeconds later) carries the
            # machine's risk on; the buffer never sees this one.
            log.warning(
                "prediction not taken by the local bus (not stored by the SensorBuffer)",
                extra={"error": str(error), "refused_since_last_log": since},
            )

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "readings_payloads": self.readings_payloads,
                "readings_dropped": self.readings_dropped,
                "predictions_published": self.published,
                "predictions_confirmed": self.confirmed,
                "predictions_refused": self.refused,
                "predictions_in_flight": self.published - self.confirmed - self.refused,
                "predictions_confirmed_by_version": dict(self.confirmed_by_version),
            }


# What the readings waiting for the predictor may hold in memory. The MQTT broker bounds it for
# QoS 1 input (acknowledged after handling: at most the client's receive maximum waits), but
# nothing slows Greengrass IPC or QoS 0 input, so a predictor behind a burst must not grow
# without bound: past this the oldest readings are dropped, acknowledged and counted.
INPUT_BACKLOG_BYTES = 64 * 1024 * 1024

_InputItem = tuple[str, bytes, "Ack | None"]


class InputQueue:
    """The transport's messages, handled on a thread of their own: the MQTT client's callback
    only queues them, so its event loop keeps reading PUBACKs and PINGRESPs while the predictor
    works through a backlog (handled on the callback, a predictor behind the readings held the
    loop until the broker's keep-alive dropped the connection, failing every prediction
    awaiting its PUBACK).

    Control messages (`is_control`: operator confirmations, maintenance events) are handled
    before any waiting reading, so a backlog never makes a confirmation expire. Readings wait
    up to `max_bytes`; past it the oldest are handed to `on_dropped` (which acknowledges and
    counts them) instead of growing memory: the SensorBuffer stores every reading whatever the
    predictor keeps up with, and the next prediction carries the machine's risk on."""

    def __init__(self, max_bytes: int = INPUT_BACKLOG_BYTES) -> None:
        self.max_bytes = max_bytes
        self.handler: MessageHandler | None = None
        self.is_control: Callable[[str], bool] = lambda name: False
        self.on_dropped: Callable[[str, bytes, Ack | None], None] = lambda *item: None
        self._control: deque[_InputItem] = deque()
        self._readings: deque[_InputItem] = deque()
        self._bytes = 0
        self._closed = False
        self._refused = 0
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, name: str, payload: bytes, ack: Ack | None) -> None:
        dropped: list[_InputItem] = []
        log_refusal = False
        with self._ready:
            refused = self._closed  # stopping: not taken, not acknowledged (`refused`)
            if refused:
                self._refused += 1
                # the first one logged, and every control message (an operator's answer)
                log_refusal = self._refused == 1 or self.is_control(name)
            elif self.is_control(name):
                self._control.append((name, payload, ack))
            else:
                self._readings.append((name, payload, ack))
                self._bytes += len(payload)
                while self._bytes > self.max_bytes and len(self._readings) > 1:
                    oldest = self._readings.popleft()
                    self._bytes -= len(oldest[1])
                    dropped.append(oldest)
            self._ready.notify()
        if log_refusal:
            log.warning("stopping: a message arriving now is not taken", extra={"topic": name})
        for item in dropped:
            self.on_dropped(*item)

    def waiting_bytes(self) -> int:
        with self._ready:
            return self._bytes

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="failure-predictor-input")
        self._thread.daemon = True
        self._thread.start()

    def _next(self) -> _InputItem | None:
        with self._ready:
            while not (self._control or self._readings or self._closed):
                self._ready.wait()
            if self._control:
                return self._control.popleft()
            if self._readings:
                item = self._readings.popleft()
                self._bytes -= len(item[1])
                return item
            return None  # closed, and everything before was handled

    def _run(self) -> None:
        while (item := self._next()) is not None:
            assert self.handler is not None
            try:
                self.handler(*item)
            except Exception:  # one bad message must not end the predictor's input
                log.exception("input message not handled", extra={"topic": item[0]})

    def stop(self, timeout: float = 10.0, finish_timeout: float = 10.0) -> int:
        """Takes no more messages and handles those queued, for up to `timeout` seconds. The
        readings still waiting then are left unhandled and unacknowledged, logged, and their
        count returned (the predictor's session is not persistent: they are skipped like the
        ones sent while it is down; the SensorBuffer stores them). The control messages waiting
        are few and quick and are still handled, for up to `finish_timeout` more with the
        message in hand; past that, those not begun are left too (and counted) with an error. So
        once stop returns nothing queued is begun, and the outbox and the transport can close:
        an anomaly or a shutdown decision raised after that would be lost."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._ready:
            left = len(self._readings)
            self._readings.clear()
            self._bytes = 0
        if left:
            log.warning(
                "stopping with readings unhandled: left unacknowledged", extra={"left": left}
            )
        if self._thread is not None:
            self._thread.join(finish_timeout)
            if self._thread.is_alive():
                with self._ready:
                    late = [name for name, _, _ in self._control]
                    self._control.clear()
                log.error(
                    "stopping: the message in hand was not done in time; the control "
                    "messages waiting are left unhandled",
                    extra={"control_left": len(late), "topics": sorted(set(late))},
                )
                left += len(late)
        return left

    @property
    def refused(self) -> int:
        """Messages that arrived after `stop` began, not taken (nor acknowledged)."""
        with self._ready:
            return self._refused


def anomaly_key(payload: bytes) -> str:
    """The anomaly's stable id (what the cloud de-duplicates by); a payload that is not an
    anomaly message is keyed by its digest."""
    try:
        return decode_anomaly(payload).anomaly_id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return "sha256:" + hashlib.sha256(payload).hexdigest()[:32]


def build(
    config: PredictorConfig,
    transport: Transport,
    outbox: OutboxSender | None = None,
    counts: LocalBusCounts | None = None,
    inputs: InputQueue | None = None,
) -> FailurePredictor:
    """The predictor, subscribed through `transport` to readings, confirmations and
    maintenance events; its anomalies go to the cloud through `outbox` (by default one from
    the configuration, whose retries then happen on the next anomaly only: start it), its
    predictions to the local bus with a confirmation, counted in `counts`. With `inputs` the
    messages are handled on its thread (started by the caller), else on the transport's."""
    sender = outbox if outbox is not None else open_outbox(config, transport)
    bus = counts if counts is not None else LocalBusCounts()
    predictions = topic(PREDICTIONS, config.factory_id)

    def publish(name: str, payload: bytes) -> None:
        if name in CLOUD_TOPICS:
            # Committed to the outbox first, then published at QoS 1 to the configured topic
            # (each environment has its own); deleted on the PUBACK, retried until then.
            try:
                sender.submit(anomaly_key(payload), payload)
            except Exception:  # the outbox cannot be written (disk full, closed): best effort
                log.exception("anomaly outbox write failed; publishing without it")
                transport.publish_cloud(config.anomalies_topic, payload)
        elif name == predictions:
            # QoS 1 on MQTT: the broker keeps it for the SensorBuffer, which acknowledges it
            # only once committed; the confirmation is counted.
            bus.publish_prediction(transport, name, payload)
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
                try:
                    predictor.on_payload(payload)
                finally:  # its predictions are handed to the bus by now
                    bus.handled_readings()
        finally:
            if ack is not None:
                ack()

    def on_dropped(name: str, payload: bytes, ack: Ack | None) -> None:
        total = bus.dropped_readings()
        if total == 1 or total % 1000 == 0:
            log.warning(
                "input backlog full: oldest readings dropped unread (the SensorBuffer still "
                "stores them; predictions skip them)",
                extra={"readings_dropped": total, "backlog_bytes": inputs_bytes()},
            )
        if ack is not None:
            ack()

    def inputs_bytes() -> int:
        return inputs.waiting_bytes() if inputs is not None else 0

    if inputs is not None:
        inputs.handler = on_message
        inputs.is_control = lambda name: name in (confirmations, maintenance)
        inputs.on_dropped = on_dropped
    transport.start(
        (readings, confirmations, maintenance), inputs.put if inputs is not None else on_message
    )
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
        self.counts = LocalBusCounts()
        self.inputs = InputQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        outbox = self.outbox = open_outbox(self.config, self.transport, self.work_dir)
        self.inputs.start()
        predictor = self.predictor = build(
            self.config, self.transport, outbox, self.counts, self.inputs
        )
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
        # handles what was queued (for up to 10 s) and nothing after, while the outbox and the
        # transport are still up
        self.inputs.stop()
        if self.outbox is not None:
            self.outbox.stop()
        self.transport.stop()
        if self.inputs.refused:
            log.warning(
                "messages that arrived while stopping were not taken",
                extra={"refused": self.inputs.refused},
            )
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
