"""Helpers for tests through real brokers: a cloud-side collector, `iiot edge run` as a
subprocess stopped by its PID, and waiting without timed asserts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iiot.contract import ReadingColumns
from iiot.topics import SENSOR_DATA
from iiot.wire import decode_batch

Key = tuple[tuple[str, ...], int, float]


class Collector:
    """A cloud-side consumer with a persistent session: keeps every payload per topic."""

    def __init__(self, port: int, topics: tuple[str, ...], client_id: str) -> None:
        self.messages: dict[str, list[bytes]] = {t: [] for t in topics}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._message
        self.client.on_connect = self._connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect("127.0.0.1", port, clean_start=False, properties=properties)
        self.topics = topics
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _connect(self, client, _userdata, _flags, _reason, _properties) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.messages.setdefault(message.topic, []).append(bytes(message.payload))

    def batches(self) -> list:
        with self._lock:
            payloads = list(self.messages.get(SENSOR_DATA, []))
        return [decode_batch(p) for p in payloads]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def readings_of(columns: ReadingColumns) -> Counter[Key]:
    return Counter(
        (tuple(columns.series[i]), int(ts), float(v))
        for i, ts, v in zip(
            columns.series_index.tolist(),
            columns.timestamp.tolist(),
            columns.value.tolist(),
            strict=True,
        )
    )


def unique_batches(batches: list) -> dict:
    """Batch id -> batch, checking that every re-sent copy carries the same readings."""
    by_id: dict = {}
    for batch in batches:
        if batch.batch_id in by_id:
            assert readings_of(by_id[batch.batch_id].columns) == readings_of(batch.columns)
        else:
            by_id[batch.batch_id] = batch
    return by_id


def uploaded(batches: list) -> Counter[Key]:
    total: Counter[Key] = Counter()
    for batch in unique_batches(batches).values():
        total.update(readings_of(batch.columns))
    return total


class Subprocess:
    """A component run as a subprocess with its output in `log`, stopped or killed by its PID."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=log)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL when it has not ended 20 s later."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class Component(Subprocess):
    """`iiot edge run` as a subprocess, killed or stopped by its PID."""

    def __init__(self, tmp_path: Path, local_url: str, cloud_url: str, *extra: str) -> None:
        self.data_dir = tmp_path / "buffer"
        args = [
            sys.executable,
            "-m",
            "local_platform.cli",
            "--log-level",
            "WARNING",
            "edge",
            "run",
            "--factory",
            "F01",
            "--broker",
            local_url,
            "--cloud-broker",
            cloud_url,
            "--data-dir",
            str(self.data_dir),
            "--batch-linger-ms",
            "50",
            "--backoff-max-s",
            "1",
            "--health-interval-s",
            "1",
            *extra,
        ]
        super().__init__(args, tmp_path / "component.log")

    def start(self, *, wait_port: int | None = None) -> None:
        """Start; with `wait_port` (the local broker), return once it reports its status."""
        status = (
            Collector(wait_port, ("factory/F01/gateway/status",), "probe") if wait_port else None
        )
        self.launch()
        if status is not None:
            try:
                wait_for(lambda: bool(status.messages["factory/F01/gateway/status"]), 30, "status")
            finally:
                status.close()

    def stop(self) -> None:
        super().stop()
        # 0: clean stop; -SIGTERM: stopped before it installed its handler (still starting)
        assert self.process is None or self.process.returncode in (
            0,
            -signal.SIGKILL,
            -signal.SIGTERM,
        )

    @property
    def db(self) -> Path:
        return self.data_dir / "sensor_buffer.sqlite3"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def connect(
    port: int,
    *,
    client_id: str = "",
    username: str | None = None,
    password: str | None = None,
    tls=None,
    client_cert: bool = False,
    clean_start: bool = True,
) -> tuple[mqtt.Client, str]:
    """A paho client and the CONNACK's reason ('Success' or why it was refused)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set(
            ca_certs=str(tls.ca),
            certfile=str(tls.client_cert) if client_cert else None,
            keyfile=str(tls.client_key) if client_cert else None,
        )
    answered = threading.Event()
    reason: list[str] = []

    def on_connect(_client, _userdata, _flags, code, _properties) -> None:
        reason.append(str(code))
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, clean_start=clean_start)
    client.loop_start()
    answered.wait(10)
    return client, reason[0] if reason else "no answer"


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()
