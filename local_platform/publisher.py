"""Publish simulated readings to an MQTT broker at a target rate (the sensors' side of a plant).

The sensors' side is not AWS: `publish` uses paho-mqtt, the usual MQTT client, over plain MQTT 5
to the gateway's local broker. Messages are JSON lists of one machine's readings at one instant,
with the simulator's configured share of malformed payloads (`messages`).

`MqttWriter` is a lean MQTT 3.1.1 publisher (QoS 1, a window of unacknowledged packets) for the
connected run, whose sensors publish tens of thousands of readings per second on a 2-core
machine: paho spends about 300 us of Python per message, this writer a few.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import msgspec
import numpy as np

from iiot.contract import ReadingColumns
from iiot.topics import readings_topic
from local_platform.simulator import MALFORMED_KINDS, malform

log = logging.getLogger(__name__)


@dataclass
class PublishSummary:
    messages: int = 0
    readings: int = 0
    malformed: int = 0
    seconds: float = 0.0


def parse_broker(url: str) -> tuple[str, int]:
    """`mqtt://host:port` -> (host, port); only plain MQTT on a local broker."""
    parsed = urlparse(url)
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ValueError(f"broker URL {url!r} must look like mqtt://127.0.0.1:1883")
    return parsed.hostname, parsed.port or 1883


@dataclass(frozen=True)
class SensorMessage:
    """One MQTT message of a machine's sensors: `kind` is "" for good readings, else the
    malformed payload's kind (`simulator.MALFORMED_KINDS`), which replaced the readings."""

    topic: str
    payload: bytes
    readings: int
    timestamp: int
    machine_id: str
    kind: str = ""


def messages(
    columns: ReadingColumns, malformed_rate: float, rng: np.random.Generator
) -> Iterator[SensorMessage]:
    """One message per machine and instant, in time order; a share of them malformed (the
    draws come from `rng`, so the same generator state gives the same messages)."""
    readings = columns.to_readings()
    groups: dict[tuple[int, str], list[int]] = {}
    for position, reading in enumerate(readings):
        groups.setdefault((reading.timestamp, reading.machine_id), []).append(position)
    for (timestamp, machine), positions in sorted(groups.items()):
        first = readings[positions[0]]
        topic = readings_topic(first.factory_id)
        if malformed_rate and rng.random() < malformed_rate:
            kind = MALFORMED_KINDS[int(rng.integers(len(MALFORMED_KINDS)))]
            yield SensorMessage(topic, malform(first, kind, rng), 1, timestamp, machine, kind)
            continue
        payload = msgspec.json.encode([readings[p] for p in positions])
        yield SensorMessage(topic, payload, len(positions), timestamp, machine)


def _messages(
    columns: ReadingColumns, malformed_rate: float, rng: np.random.Generator
) -> Iterable[tuple[str, bytes, int, bool]]:
    """(topic, payload, readings, malformed) per machine and instant, in time order."""
    for message in messages(columns, malformed_rate, rng):
        yield message.topic, message.payload, message.readings, bool(message.kind)


def publish(
    chunks: Iterable[ReadingColumns],
    broker: str,
    *,
    rate: float = 0.0,
    malformed_rate: float = 0.0,
    seed: int = 0,
    client_id: str = "iiot-simulator",
    on_message: Callable[[int], None] | None = None,
) -> PublishSummary:
    """Publish at QoS 1; `rate` caps readings per second (0 = as fast as the broker takes)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = parse_broker(broker)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    rng = np.random.default_rng([seed, 11])
    summary = PublishSummary()
    began = time.perf_counter()
    pending = []
    try:
        for columns in chunks:
            for topic, payload, count, broken in _messages(columns, malformed_rate, rng):
                pending.append(client.publish(topic, payload, qos=1))
                summary.messages += 1
                summary.readings += count
                summary.malformed += broken
                if on_message:
                    on_message(count)
                if len(pending) >= 500:
                    for info in pending:
                        info.wait_for_publish(timeout=30)
                    pending.clear()
                if rate > 0:
                    ahead = summary.readings / rate - (time.perf_counter() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        for info in pending:
            info.wait_for_publish(timeout=30)
    finally:
        client.loop_stop()
        client.disconnect()
    summary.seconds = time.perf_counter() - began
    log.info(
        "published",
        extra={"messages": summary.messages, "readings": summary.readings, "broker": broker},
    )
    return summary


class MqttWriter:
    """Publish at QoS 1 over MQTT 3.1.1 with at most `window` packets unacknowledged.

    `publish` encodes into a buffer, `flush` sends it and waits for every PUBACK. A reader
    thread counts the acknowledgements; a lost connection fails the next call."""

    def __init__(
        self, url: str, client_id: str, *, window: int = 5000, keepalive_s: int = 60
    ) -> None:
        import socket
        import threading

        if not 0 < window < 60_000:
            raise ValueError("window must be between 1 and 59999 packets")
        self.host, self.port = parse_broker(url)
        self.client_id = client_id
        self.window = window
        self.keepalive_s = keepalive_s
        self._socket = socket.create_connection((self.host, self.port), timeout=10)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        self._next_id = 0
        self.sent = 0
        self.acked = 0
        self._error: BaseException | None = None
        self._acked = threading.Condition()
        self._last_send = time.monotonic()
        self._connect()
        self._socket.settimeout(None)
        self._reader = threading.Thread(target=self._read, name="mqtt-writer-acks", daemon=True)
        self._reader.start()

    @staticmethod
    def _length(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value % 128, value // 128
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    @staticmethod
    def _string(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    def _connect(self) -> None:
        body = (
            self._string(b"MQTT")
            + bytes([4, 0x02])  # protocol level 4 (3.1.1), clean session
            + self.keepalive_s.to_bytes(2, "big")
            + self._string(self.client_id.encode())
        )
        self._socket.sendall(b"\x10" + self._length(len(body)) + body)
        answer = self._recv_exactly(4)
        if answer[0] != 0x20 or answer[3] != 0:
            raise ConnectionError(f"MQTT CONNECT to {self.host}:{self.port} refused: {answer!r}")

    def _recv_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self._socket.recv(size - len(data))
            if not chunk:
                raise ConnectionError(f"{self.host}:{self.port} closed the connection")
            data.extend(chunk)
        return bytes(data)

    def _read(self) -> None:
        pending = bytearray()
        try:
            while True:
                chunk = self._socket.recv(65536)
                if not chunk:
                    raise ConnectionError(f"{self.host}:{self.port} closed the connection")
                pending.extend(chunk)
                acks = 0
                position = 0
                while len(pending) - position >= 2:
                    kind = pending[position]
                    length, size, multiplier = 0, 1, 1
                    while True:
                        if position + size >= len(pending):
                            length = -1
                            break
                        byte = pending[position + size]
                        length += (byte & 0x7F) * multiplier
                        multiplier *= 128
                        size += 1
                        if not byte & 0x80:
                            break
                    if length < 0 or position + size + length > len(pending):
                        break
                    if kind & 0xF0 == 0x40:  # PUBACK
                        acks += 1
                    position += size + length
                del pending[:position]
                if acks:
                    with self._acked:
                        self.acked += acks
                        self._acked.notify_all()
        except BaseException as exc:  # handed to the publishing thread
            with self._acked:
                if self._error is None:
                    self._error = exc
                self._acked.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ConnectionError(f"MQTT connection lost: {self._error}") from self._error

    def publish(self, topic: str, payload: bytes) -> None:
        self._raise_if_failed()
        if self.sent - self.acked >= self.window:
            self._send()
            with self._acked:
                while self.sent - self.acked >= self.window and self._error is None:
                    self._acked.wait(1.0)
            self._raise_if_failed()
        self._next_id = self._next_id % 65535 + 1
        topic_bytes = topic.encode()
        length = 2 + len(topic_bytes) + 2 + len(payload)
        self._buffer += b"\x32" + self._length(length)
        self._buffer += self._string(topic_bytes)
        self._buffer += self._next_id.to_bytes(2, "big")
        self._buffer += payload
        self.sent += 1
        if len(self._buffer) >= 64 * 1024:
            self._send()

    def _send(self) -> None:
        if self._buffer:
            self._socket.sendall(self._buffer)
            self._buffer.clear()
            self._last_send = time.monotonic()
        elif time.monotonic() - self._last_send > self.keepalive_s / 2:
            self._socket.sendall(b"\xc0\x00")  # PINGREQ
            self._last_send = time.monotonic()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Send what is buffered and wait until the broker acknowledged every publish."""
        self._send()
        deadline = time.monotonic() + timeout_s
        with self._acked:
            while self.acked < self.sent and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.sent - self.acked} publishes unacknowledged after {timeout_s} s"
                    )
                self._acked.wait(min(left, 1.0))
        self._raise_if_failed()

    def send_now(self) -> None:
        """Send what is buffered without waiting (pacing: before sleeping)."""
        self._raise_if_failed()
        self._send()

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            self._socket.sendall(b"\xe0\x00")  # DISCONNECT
        with contextlib.suppress(OSError):
            self._socket.close()
