"""The collector: PLC subscriptions -> readings -> a bounded backlog -> the SensorBuffer's input.

One asyncio loop in a thread of its own runs, per PLC, a session with one subscription of data
changes for every configured node; a publisher that sends the backlog to the readings topic in
JSON envelopes (`iiot.wire.encode_json`) every `publishIntervalMs`; and a health report.

* **PLC restarts and outages**: a lost session (the PLC restarted, the cable was pulled, the
  watchdog's read timed out) is dropped and made again, subscriptions included, after a delay
  that doubles from `backoffInitialSeconds` to `backoffMaxSeconds` (with jitter, so that a
  gateway's PLCs do not reconnect in step); the same when the PLC is not there at start. A node
  the PLC refuses (an unknown node id) is logged with the PLC's reason and retried with the next
  session. Node ids given by namespace URI (`nsu=...`) are resolved at every session, so a PLC
  whose namespace indexes moved after a restart is still read right.
* **Bounded backlog**: readings wait in memory for the publisher, at most `backlogMaxReadings`;
  beyond that the oldest are dropped and counted (`dropped`), logged once a minute at most.
  A publish that fails keeps its readings at the head of the backlog for the next tick.
* **Bad values** are refused with the reason (`opcua_collector.mapping`), counted per reason
  and per node, and logged (the first of each node, then at most once a minute with the count);
  the latest 50 are kept with their node, value, status and reason (`recent_rejects` in the
  status), so that a throttled log does not lose what was refused.
  The initial notification of a new session repeats the last value the PLC had: a value equal
  to the node's previous one with the same timestamp is skipped (`repeated`).
* **Health** every `healthIntervalSeconds` on `factory/<id>/collector/status` and in the log:
  each PLC's state, reconnects and last error, readings and payloads published, rejects by
  reason, repeated, backlog and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif
from cryptography import x509

from edge_runtime.transport import Ack, Transport
from iiot.catalog import MetricCatalog
from iiot.contract import Reading, Validator
from iiot.wire import encode_json
from opcua_collector.config import CollectorConfig, NodeMapping, PlcConfig
from opcua_collector.mapping import to_reading

log = logging.getLogger("opcua_collector")

_LOG_EVERY_S = 60.0  # repeated warnings of one kind: at most once a minute per node or PLC
_DISCONNECT_TIMEOUT_S = 2.0
_LAST_PUBLISH_GRACE_S = 0.3
_RECENT_REJECTS = 50  # the latest refused values kept (and reported) with their reasons


@dataclass
class PlcState:
    """What the collector knows of one PLC (reported in the status)."""

    endpoint: str
    connected: bool = False
    sessions: int = 0
    reconnects: int = 0
    nodes_subscribed: int = 0
    nodes_refused: dict[str, str] = field(default_factory=dict)
    last_error: str = ""
    last_value_ms: int | None = None


@dataclass
class _Throttle:
    """First occurrence logged at once, later ones at most every `_LOG_EVERY_S` with a count."""

    last: float = -1e18
    suppressed: int = 0


class _Handler:
    """asyncua's subscription callbacks for one PLC session."""

    def __init__(
        self, collector: OpcUaCollector, plc: PlcConfig, nodes: dict[ua.NodeId, NodeMapping]
    ) -> None:
        self.collector = collector
        self.plc = plc
        self.nodes = nodes
        self.lost: asyncio.Event = asyncio.Event()

    def datachange_notification(self, node: Node, _value: Any, data: DataChangeNotif) -> None:
        mapping = self.nodes.get(node.nodeid)
        if mapping is not None:
            self.collector.on_value(self.plc, mapping, data.monitored_item.Value)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        # The PLC ended the subscription (shutting down, session timed out): a new session.
        log.warning(
            "plc subscription status changed",
            extra={"plc": self.plc.name, "status": status.Status.name},
        )
        if not status.Status.is_good():
            self.lost.set()


class OpcUaCollector:
    """The component (edge_runtime.run.Component): `start()` returns once running."""

    def __init__(
        self,
        config: CollectorConfig,
        transport: Transport,
        catalog: MetricCatalog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.transport = transport
        self.validator = Validator(catalog, clock=clock)
        self._clock = clock
        self.plcs = {plc.name: PlcState(plc.endpoint) for plc in config.plcs}
        self.backlog: deque[Reading] = deque()
        self.published_readings = 0
        self.published_payloads = 0
        self.publish_failures = 0
        self.dropped = 0
        self.repeated = 0
        self.rejected: Counter[str] = Counter()  # by reason kind: status, value, timestamp, ...
        self.rejected_by_node: Counter[str] = Counter()
        self.last_rejects: dict[str, str] = {}  # "<plc>/<node id>" -> the latest reason
        # the latest refused values themselves, with node, time and reason (bounded)
        self.recent_rejects: deque[dict[str, Any]] = deque(maxlen=_RECENT_REJECTS)
        self.last_status: dict[str, Any] = {}
        self._last: dict[tuple[str, str], tuple[int, float]] = {}
        self._throttles: dict[str, _Throttle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.transport.start((), self._no_input)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="opcua-collector", daemon=True
        )
        self._thread.start()
        self._started.wait(10)
        log.info(
            "opcua collector started",
            extra={
                "factory_id": self.config.factory_id,
                "topic": self.config.readings,
                "plcs": {p.name: p.endpoint for p in self.config.plcs},
                "nodes": sum(len(p.nodes) for p in self.config.plcs),
            },
        )

    def stop(self, timeout: float = 15.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
        # The last flush's publishes are fire-and-forget (local pub/sub has no acknowledgement
        # to wait for): give them a moment to leave before the transport disconnects.
        time.sleep(_LAST_PUBLISH_GRACE_S)
        self.transport.stop()

    @staticmethod
    def _no_input(_topic: str, _payload: bytes, ack: Ack | None) -> None:
        if ack is not None:
            ack()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started.set()
        tasks = [asyncio.create_task(self._plc_loop(plc)) for plc in self.config.plcs]
        tasks += [asyncio.create_task(self._publish_loop()), asyncio.create_task(self._health())]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flush()  # what the last tick left
        self.publish_status()

    # ----------------------------------------------------------------------------- the PLCs

    async def _plc_loop(self, plc: PlcConfig) -> None:
        state = self.plcs[plc.name]
        assert self._stopping is not None
        delay = self.config.backoff_initial_s
        while not self._stopping.is_set():
            client = Client(
                plc.endpoint, timeout=plc.timeout_s, watchdog_intervall=plc.watchdog_interval_s
            )
            connected = False
            try:
                handler = await self._session(client, plc)
                connected = True
                delay = self.config.backoff_initial_s
                lost = asyncio.create_task(handler.lost.wait())
                stop = asyncio.create_task(self._stopping.wait())
                try:
                    await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    stop.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.last_error = f"{type(exc).__name__}: {exc}"
                # a PLC that answers but refuses the session (login, security policy, a node
                # id it does not know) is not an unreachable one: say which it was
                unreachable = isinstance(exc, OSError | TimeoutError)
                self._warn(
                    f"connect:{plc.name}",
                    "plc not reachable; retrying"
                    if unreachable
                    else "plc refused the session; retrying",
                    plc=plc.name,
                    endpoint=plc.endpoint,
                    error=state.last_error,
                    retry_in_s=round(delay, 2),
                )
            finally:
                state.connected = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), _DISCONNECT_TIMEOUT_S)
            if self._stopping.is_set():
                return
            if connected:
                state.reconnects += 1
                log.warning(
                    "plc connection lost; reconnecting",
                    extra={"plc": plc.name, "endpoint": plc.endpoint, "error": state.last_error},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.config.backoff_max_s)

    async def _session(self, client: Client, plc: PlcConfig) -> _Handler:
        """Connect to `plc` and subscribe to its nodes; return the session's handler."""
        state = self.plcs[plc.name]
        security = plc.security_string()
        if security is not None:
            # A PLC checks that the session's application URI is the certificate's.
            client.application_uri = application_uri(plc.certificate) or client.application_uri
            await client.set_security_string(security)
        if plc.username:
            client.set_user(plc.username)
            if plc.password_file:
                client.set_password(Path(plc.password_file).read_text().splitlines()[0])
        handler = _Handler(self, plc, {})

        async def lost(exc: Exception) -> None:
            state.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            handler.lost.set()

        client.connection_lost_callback = lost
        await asyncio.wait_for(client.connect(), plc.timeout_s * 2)
        nodes: dict[ua.NodeId, NodeMapping] = {}
        # A node whose namespace URI the PLC does not publish is refused like an unknown node:
        # one mistyped nodeId must not stop every other node of the PLC.
        refused: dict[str, str] = {}
        for mapping in plc.nodes:
            try:
                nodes[await _resolve(client, mapping.node_id)] = mapping
            except UnknownNamespaceError as exc:
                refused[mapping.node_id] = str(exc)
        handler.nodes = nodes
        if nodes:
            subscription = await client.create_subscription(plc.publishing_interval_ms, handler)
            results = await subscription.subscribe_data_change(
                [client.get_node(node_id) for node_id in nodes],
                queuesize=plc.queue_size,
                sampling_interval=ua.Double(plc.sampling_interval_ms),
            )
            refused |= {
                mapping.node_id: result.name
                for mapping, result in zip(nodes.values(), results, strict=True)
                if isinstance(result, ua.StatusCode)
            }
        state.connected = True
        state.sessions += 1
        state.nodes_subscribed = len(plc.nodes) - len(refused)
        state.nodes_refused = refused
        state.last_error = ""
        for node_id, reason in refused.items():
            log.error(
                "plc refused a node: check its node id",
                extra={"plc": plc.name, "node_id": node_id, "reason": reason},
            )
        log.info(
            "plc connected",
            extra={
                "plc": plc.name,
                "endpoint": plc.endpoint,
                "nodes": state.nodes_subscribed,
                "refused": len(refused),
                "session": state.sessions,
            },
        )
        return handler

    # ----------------------------------------------------------------------------- readings

    def on_value(self, plc: PlcConfig, node: NodeMapping, data: ua.DataValue) -> None:
        """One data change of `node` (called on the loop): to the backlog, or refused."""
        received_ms = int(self._clock() * 1000)
        self.plcs[plc.name].last_value_ms = received_ms
        result = to_reading(
            node,
            data,
            factory_id=self.config.factory_id,
            timestamps=plc.timestamps,
            received_ms=received_ms,
            validator=self.validator,
        )
        key = f"{plc.name}/{node.node_id}"
        if isinstance(result, str):
            self.rejected[result.split(":", 1)[0]] += 1
            self.rejected_by_node[key] += 1
            self.last_rejects[key] = result
            shown = repr(getattr(data.Value, "Value", None))
            self.recent_rejects.append(
                {
                    "plc": plc.name,
                    "node_id": node.node_id,
                    "machine_id": node.machine_id,
                    "sensor_id": node.sensor_id,
                    "received_ms": received_ms,
                    "value": shown[:80],
                    "status": data.StatusCode.name if data.StatusCode is not None else None,
                    "reason": result,
                }
            )
            self._warn(
                f"reject:{key}",
                "opcua value rejected",
                plc=plc.name,
                node_id=node.node_id,
                machine_id=node.machine_id,
                sensor_id=node.sensor_id,
                metric=node.metric,
                reason=result,
            )
            return
        series = (plc.name, node.node_id)
        if self._last.get(series) == (result.timestamp, result.value):
            self.repeated += 1  # a new session's initial notification of an unchanged value
            return
        self._last[series] = (result.timestamp, result.value)
        if len(self.backlog) >= self.config.backlog_max_readings:
            self.backlog.popleft()
            self.dropped += 1
            self._warn(
                "backlog",
                "backlog full: oldest readings dropped",
                backlog_max_readings=self.config.backlog_max_readings,
                dropped=self.dropped,
            )
        self.backlog.append(result)

    async def _publish_loop(self) -> None:
        interval = self.config.publish_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._flush()

    def _flush(self) -> None:
        """Send the backlog, oldest first, in payloads of at most `maxBatchReadings`."""
        size = self.config.max_batch_readings
        while self.backlog:
            batch = [self.backlog.popleft() for _ in range(min(size, len(self.backlog)))]
            try:
                self.transport.publish_local(self.config.readings, encode_json(batch))
            except Exception as exc:
                self.backlog.extendleft(reversed(batch))  # first again at the next tick
                self.publish_failures += 1
                self._warn("publish", "readings publish failed; kept", error=str(exc))
                return
            self.published_readings += len(batch)
            self.published_payloads += 1

    # ------------------------------------------------------------------------------ health

    def status(self) -> dict[str, Any]:
        now_ms = int(self._clock() * 1000)
        return {
            "factory_id": self.config.factory_id,
            "timestamp": now_ms,
            "plcs": {
                name: {
                    "endpoint": state.endpoint,
                    "connected": state.connected,
                    "sessions": state.sessions,
                    "reconnects": state.reconnects,
                    "nodes_subscribed": state.nodes_subscribed,
                    "nodes_refused": dict(state.nodes_refused),
                    "last_error": state.last_error,
                    "last_value_age_s": None
                    if state.last_value_ms is None
                    else round((now_ms - state.last_value_ms) / 1000, 1),
                }
                for name, state in self.plcs.items()
            },
            "published_readings": self.published_readings,
            "published_payloads": self.published_payloads,
            "publish_failures": self.publish_failures,
            "rejected": dict(self.rejected),
            "recent_rejects": list(self.recent_rejects),
            "repeated": self.repeated,
            "backlog": len(self.backlog),
            "dropped": self.dropped,
        }

    def publish_status(self) -> dict[str, Any]:
        status = self.last_status = self.status()
        log.info("opcua collector status", extra=status)
        try:
            self.transport.publish_local(self.config.status, msgspec.json.encode(status))
        except Exception:
            log.debug("status publish failed", exc_info=True)
        return status

    async def _health(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            self.publish_status()

    def _warn(self, key: str, message: str, **extra: Any) -> None:
        throttle = self._throttles.setdefault(key, _Throttle())
        now = time.monotonic()
        if now - throttle.last < _LOG_EVERY_S:
            throttle.suppressed += 1
            return
        log.warning(message, extra={**extra, "suppressed_since_last": throttle.suppressed})
        throttle.last, throttle.suppressed = now, 0


class UnknownNamespaceError(LookupError):
    """A node id's namespace URI is not in the PLC's namespace array."""


async def _resolve(client: Client, node_id: str) -> ua.NodeId:
    """The node id on this session: `nsu=<uri>;...` gets the PLC's current namespace index."""
    parsed = ua.NodeId.from_string(node_id)
    uri = getattr(parsed, "NamespaceUri", None)
    if not uri:
        return parsed
    namespaces = await client.get_namespace_array()
    if uri not in namespaces:
        raise UnknownNamespaceError(f"BadNamespaceUnknown: the PLC has no namespace {uri}")
    return ua.NodeId(parsed.Identifier, ua.Int16(namespaces.index(uri)), parsed.NodeIdType)


def application_uri(certificate: str) -> str | None:
    """The URI in the certificate's subject alternative names (PEM or DER), if any."""
    data = Path(certificate).read_bytes()
    cert = (
        x509.load_pem_x509_certificate(data)
        if data.lstrip().startswith(b"-----BEGIN")
        else x509.load_der_x509_certificate(data)
    )
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
