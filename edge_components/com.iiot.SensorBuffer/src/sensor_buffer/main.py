"""Wiring: configuration + transport + store + ingest + thresholds + uploader + health.

`SensorBuffer` owns three threads: ingest (micro-batches, group commit, local alerts), upload
(anomalies first, then the backlog) and health. The transport is injected
(`edge_runtime.transport`): `main()` builds the Greengrass IPC one on a gateway and runs the
buffer in the shared run loop (`edge_runtime.run`); `iiot edge run` builds the MQTT 5 one.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from edge_runtime.transport import Transport
from iiot.anomaly import Anomaly, encode_anomaly
from iiot.catalog import MetricCatalog, load_catalog
from iiot.contract import Validator
from sensor_buffer.alert_window import AlertWindow
from sensor_buffer.config import BufferConfig, from_component_config
from sensor_buffer.derived import METRIC as PREDICTION_METRIC
from sensor_buffer.derived import PredictionSeries
from sensor_buffer.health import HealthTracker
from sensor_buffer.ingest import Incoming, Ingestor, IngestResult, micro_batch_share
from sensor_buffer.store import Store
from sensor_buffer.thresholds import ThresholdChecker
from sensor_buffer.uploader import Uploader

log = logging.getLogger(__name__)

_MAINTENANCE_INTERVAL_S = 60.0
_BUFFER_ALERT_INTERVAL_S = 60.0


class SensorBuffer:
    """The component. `start()` connects and runs; `stop()` drains the last micro-batch."""

    def __init__(
        self,
        config: BufferConfig,
        transport: Transport,
        catalog: MetricCatalog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config.with_catalog(catalog)
        self.transport = transport
        self._clock = clock
        self.store = Store(
            self.config.db_path,
            producer=f"{config.factory_id}/{config.gateway_id}",
            synchronous=config.synchronous,
            max_disk_bytes=config.max_disk_bytes,
            full_policy=config.full_policy,
            downsample_factor=config.downsample_factor,
            retention_ms=int(config.retention_days * 86_400_000),
            quarantine_max_bytes=config.quarantine_max_bytes,
            clock=clock,
        )
        self.checker = ThresholdChecker(self.config.thresholds, self.store.series.__getitem__)
        predictions = None
        if self.config.predictions and PREDICTION_METRIC in catalog.derived:
            predictions = PredictionSeries(
                catalog[PREDICTION_METRIC],
                deadband=config.prediction_deadband,
                max_interval_ms=int(config.prediction_max_interval_s * 1000),
            )
        self.ingestor = Ingestor(
            self.store,
            Validator(catalog, clock=clock),
            self.checker,
            on_alerts=self._publish_alerts,
            max_block_readings=config.commit_max_readings,
            limits=config.limits,
            clock=clock,
            predictions=predictions,
            predictions_topic=self.config.predictions,
        )
        self.uploader = Uploader(self.store, transport.publish_cloud, self.config)
        self.health = HealthTracker(self.store, clock)
        self._queue: queue.Queue[Incoming] = queue.Queue(maxsize=200_000)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._full_alerts = AlertWindow(_BUFFER_ALERT_INTERVAL_S, clock)
        self._quarantine_alerts = AlertWindow(_BUFFER_ALERT_INTERVAL_S, clock)
        self.alerts_published = 0
        self.last_status: dict[str, Any] = {}

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for name, target in (
            ("ingest", self._ingest_loop),
            ("upload", lambda: self.uploader.run(self._stop)),
            ("health", self._health_loop),
        ):
            thread = threading.Thread(target=target, name=f"sensor-buffer-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.transport.start(self.config.topics_in, self.on_message)
        log.info(
            "sensor buffer started",
            extra={
                "db": str(self.config.db_path),
                "topics": list(self.config.topics_in),
                "next_seq": self.store.next_seq,
                "acked_seq": self.store.acked_seq,
            },
        )

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.uploader.wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._send_buffer_alerts(force=True)  # what the last interval counted
        self.transport.stop()
        self.publish_status()
        self.store.close()

    def on_message(self, topic: str, payload: bytes, ack: Callable[[], None] | None) -> None:
        """Transport callback: hand over to the ingest thread (never blocks on the database)."""
        self._queue.put(Incoming(topic, payload, int(self._clock() * 1000), ack))

    # ------------------------------------------------------------------------------ ingest

    def _ingest_loop(self) -> None:
        interval = self.config.commit_interval_ms / 1000
        limit = self.config.commit_max_readings
        limits = self.config.limits
        pending: list[Incoming] = []
        estimate = 0
        deadline: float | None = None
        next_maintenance = time.monotonic() + _MAINTENANCE_INTERVAL_S
        while True:
            stopping = self._stop.is_set()
            timeout = 0.2 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=0 if stopping else timeout)
                pending.append(item)
                estimate += micro_batch_share(item.payload, limits)
                while estimate < limit:
                    item = self._queue.get_nowait()
                    pending.append(item)
                    estimate += micro_batch_share(item.payload, limits)
            except queue.Empty:
                pass
            now = time.monotonic()
            if pending and deadline is None:
                deadline = now + interval
            if pending and (estimate >= limit or now >= (deadline or now) or stopping):
                self._process(pending)
                pending, estimate, deadline = [], 0, None
                continue
            if stopping and self._queue.empty():
                return
            self._send_buffer_alerts()
            if now >= next_maintenance:
                next_maintenance = now + _MAINTENANCE_INTERVAL_S
                try:
                    dropped = self.store.maintenance()
                    if dropped:
                        log.warning(
                            "retention dropped unsent readings", extra={"readings": dropped}
                        )
                        self._buffer_alert(
                            "BUFFER_RETENTION_DROP",
                            "WARNING",
                            f"retention ({self.config.retention_days:g} days) dropped "
                            f"{dropped} unsent readings",
                        )
                except Exception:
                    log.exception("maintenance failed")

    def _process(self, items: list[Incoming]) -> IngestResult | None:
        try:
            result = self.ingestor.process(items)
        except Exception:
            # Only a storage error gets here (each payload is isolated): the payloads stay
            # unacknowledged, so the broker redelivers them.
            log.exception("ingest micro-batch not committed", extra={"payloads": len(items)})
            return None
        if result.full_events:
            readings = sum(e.readings for e in result.full_events)
            policies = sorted({e.policy for e in result.full_events})
            log.warning("buffer full", extra={"policies": policies, "readings": readings})
            self._full_alerts.add(readings, policies)
        if result.quarantine_evicted:
            log.warning(
                "quarantine full: oldest rows evicted",
                extra={
                    "rows": result.quarantine_evicted,
                    "quarantine_bytes": self.store.quarantine_bytes,
                },
            )
            self._quarantine_alerts.add(result.quarantine_evicted)
        self._send_buffer_alerts()
        self.uploader.wake.set()
        return result

    def _publish_alerts(self, anomalies: list[Anomaly]) -> None:
        for anomaly in anomalies:
            self.transport.publish_local(self.config.local_alerts_topic, encode_anomaly(anomaly))
            self.alerts_published += 1

    def _send_buffer_alerts(self, *, force: bool = False) -> None:
        """BUFFER_FULL and BUFFER_QUARANTINE_FULL, each at most once per interval with the
        count of everything since its previous alert."""
        full = self._full_alerts.take_due(force=force)
        if full is not None:
            self._buffer_alert(
                "BUFFER_FULL",
                "CRITICAL" if "reject_new" in full.causes else "WARNING",
                f"disk cap ({self.store.max_disk_bytes} bytes) reached: "
                f"{'/'.join(full.causes)} affected {full.count} readings since the previous "
                "BUFFER_FULL alert",
                metric="buffer_bytes",
                value=self.store.used_bytes,
                threshold=self.store.max_disk_bytes,
            )
        evicted = self._quarantine_alerts.take_due(force=force)
        if evicted is not None:
            self._buffer_alert(
                "BUFFER_QUARANTINE_FULL",
                "WARNING",
                f"quarantine cap ({self.store.quarantine_max_bytes} bytes) reached: "
                f"{evicted.count} oldest quarantined rejects evicted since the previous "
                "BUFFER_QUARANTINE_FULL alert; inspect the quarantine or raise "
                "quarantineMaxBytes",
                metric="quarantine_bytes",
                value=self.store.quarantine_bytes,
                threshold=self.store.quarantine_max_bytes,
            )

    def _buffer_alert(
        self,
        kind: str,
        severity: str,
        message: str,
        *,
        metric: str = "buffer_bytes",
        value: float | None = None,
        threshold: float | None = None,
    ) -> None:
        """An alert about the buffer itself: on the local alerts topic and to the cloud."""
        alert = Anomaly(
            factory_id=self.config.factory_id,
            machine_id=self.config.gateway_id,
            metric=metric,
            anomaly_type=kind,
            severity=severity,  # type: ignore[arg-type]
            value=float(self.store.used_bytes if value is None else value),
            threshold=float(self.store.max_disk_bytes if threshold is None else threshold),
            timestamp=int(self._clock() * 1000),
            source="edge",
            message=message,
        )
        try:
            self._publish_alerts([alert])
            self.store.add_anomalies([(alert.anomaly_id, encode_anomaly(alert))])
        except Exception:
            log.exception("buffer alert not sent", extra={"kind": kind, "alert": message})
        self.uploader.wake.set()

    # ------------------------------------------------------------------------------ health

    def status(self) -> dict[str, Any]:
        return self.health.snapshot(
            {
                "queue": self._queue.qsize(),
                "in_flight": self.uploader.in_flight,
                "alerts_published": self.alerts_published,
                "publish_failures": self.uploader.publish_failures,
                "wire_bytes_acked": self.uploader.wire_bytes_acked,
            }
        )

    def publish_status(self) -> dict[str, Any]:
        status = self.status()
        self.last_status = status
        log.info("sensor buffer status", extra=status)
        payload = msgspec.json.encode(status)
        try:
            self.transport.publish_local(self.config.status, payload)
        except Exception:
            log.debug("status publish failed", exc_info=True)
        return status

    def _health_loop(self) -> None:
        while not self._stop.wait(self.config.health_interval_s):
            try:
                self.publish_status()
            except Exception:
                log.exception("health report failed")


def gateway_config(raw: dict[str, Any], catalog: MetricCatalog) -> BufferConfig:
    """The component configuration on a gateway: factoryId defaults to the thing name, the data
    directory to the component's work folder (set by the recipe)."""
    factory_id = raw.get("factoryId") or os.environ.get("AWS_IOT_THING_NAME", "")
    data_dir = Path(os.environ.get("SENSOR_BUFFER_DATA_DIR", raw.get("dataDir") or "data"))
    return from_component_config(raw, catalog=catalog, factory_id=factory_id, data_dir=data_dir)


def validation_problem(raw: dict[str, Any], catalog: MetricCatalog) -> str | None:
    """Why a configuration update must be refused, or None (the deployment reports it)."""
    try:
        gateway_config(raw, catalog)
    except ValueError as exc:
        return str(exc)
    return None


def main() -> None:
    """Greengrass entry point (the recipe's Run step): configuration and transport from IPC.

    A configuration update is validated before the nucleus applies it (a bad one fails the
    deployment with the reason); an applied update restarts the buffer in-process with it.
    """
    from edge_runtime.ipc import ConfigurationWatch, IpcTransport, read_component_configuration
    from edge_runtime.run import run_until_signalled
    from iiot import logs

    logs.configure(os.environ.get("SENSOR_BUFFER_LOG_LEVEL", "INFO"))
    catalog = load_catalog()

    def buffer() -> SensorBuffer:
        config = gateway_config(read_component_configuration(), catalog)
        return SensorBuffer(config, IpcTransport(), catalog)

    run_until_signalled(
        buffer,
        watch=lambda on_change: ConfigurationWatch(
            lambda raw: validation_problem(raw, catalog), on_change
        ),
    )


if __name__ == "__main__":
    main()
