"""What a gateway component needs from a message transport, and nothing more.

Each component's `main.py` builds one (`edge_runtime.ipc.IpcTransport` on a gateway,
`edge_runtime.mqtt.MqttTransport` for local runs and tests) and injects it; the logic sees plain
callbacks and futures, so tests can use `MemoryTransport`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

Ack = Callable[[], None]
# (topic, payload, ack): call ack() once the payload is handled (durably, where that matters);
# ack is None when the transport cannot defer acknowledgements (Greengrass IPC local pub/sub).
MessageHandler = Callable[[str, bytes, Ack | None], None]


class Transport(Protocol):
    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        """Connect and subscribe to the input topics."""

    def publish_local(self, topic: str, payload: bytes) -> None:
        """Publish on the gateway's local bus (alerts, status): fire and forget."""

    def publish_local_confirmed(self, topic: str, payload: bytes) -> Future[None]:
        """Publish on the local bus and learn whether the bus took it: the future resolves when
        the local broker acknowledged it (MQTT QoS 1: its PUBACK, after which a subscriber's
        persistent session holds it until that subscriber acknowledges it), or when the
        Greengrass nucleus accepted it (IPC: delivered in memory to the subscribers running at
        that moment, no queue for one that is not); it fails when the bus did not take it."""

    def publish_cloud(self, topic: str, payload: bytes) -> Future[None]:
        """Publish to the cloud at QoS 1; the future resolves on the broker's PUBACK."""

    def stop(self) -> None:
        """Disconnect; pending publishes fail their futures."""


class MemoryTransport:
    """An in-process transport for unit tests: records publishes, acknowledges on demand.

    `local` and `cloud` hold each side's publishes, `published` all of them in order;
    `auto_ack=False` keeps cloud futures pending (in `pending`) until the test resolves them,
    and `fail_next` fails that many cloud publishes at once (`fail_next_local` that many
    confirmed local publishes).
    """

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.local: list[tuple[str, bytes]] = []
        self.cloud: list[tuple[str, bytes]] = []
        self.published: list[tuple[str, bytes]] = []
        self.pending: list[Future[None]] = []
        self.topics: tuple[str, ...] = ()
        self.handler: MessageHandler | None = None
        self.fail_next = 0
        self.fail_next_local = 0
        self._lock = threading.Lock()

    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        self.topics, self.handler = topics, on_message

    def deliver(self, topic: str, payload: bytes, ack: Ack | None = None) -> None:
        assert self.handler is not None, "deliver() before start()"
        self.handler(topic, payload, ack)

    def publish_local(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.local.append((topic, payload))
            self.published.append((topic, payload))

    def publish_local_confirmed(self, topic: str, payload: bytes) -> Future[None]:
        """Recorded like `publish_local`; resolved at once, or failed while `fail_next_local`
        lasts (then not recorded)."""
        future: Future[None] = Future()
        with self._lock:
            if self.fail_next_local:
                self.fail_next_local -= 1
                future.set_exception(ConnectionError("simulated local bus failure"))
                return future
            self.local.append((topic, payload))
            self.published.append((topic, payload))
        future.set_result(None)
        return future

    def publish_cloud(self, topic: str, payload: bytes) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                future.set_exception(ConnectionError("simulated outage"))
                return future
            self.cloud.append((topic, payload))
            self.published.append((topic, payload))
            if self.auto_ack:
                future.set_result(None)
            else:
                self.pending.append(future)
        return future

    def stop(self) -> None:
        for future in self.pending:
            if not future.done():
                future.set_exception(ConnectionError("transport stopped"))
