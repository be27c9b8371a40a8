"""Fixtures for the SensorBuffer tests: real mosquitto brokers on 127.0.0.1, simulated data."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iiot.catalog import MetricCatalog
from iiot.contract import ReadingColumns
from iiot.simulator import FleetConfig, FleetSimulator

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """A mosquitto started by a test, bound to 127.0.0.1, stopped by its PID."""

    port: int
    directory: Path
    persistent: bool
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            f"persistence {'true' if self.persistent else 'false'}",
            f"persistence_location {self.directory}/",
            "autosave_interval 1",
            f"log_dest file {self.directory}/mosquitto.log",
            "log_type all",
        ]
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mosquitto exited with {self.process.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None


@pytest.fixture
def broker_factory() -> Iterator[Callable[..., Broker]]:
    if not os.path.exists(MOSQUITTO):
        pytest.fail("mosquitto is not installed (scripts/bootstrap.sh test installs it)")
    brokers: list[Broker] = []

    def make(*, persistent: bool = False) -> Broker:
        # Started as root, mosquitto drops to its own user: its log and persistence files need
        # a directory that user can reach and write (pytest's tmp_path is private to root).
        directory = Path(tempfile.mkdtemp(prefix="iiot-edge-broker-"))
        directory.chmod(0o777)
        broker = Broker(free_port(), directory, persistent)
        broker.start()
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()
        shutil.rmtree(broker.directory, ignore_errors=True)


def simulated(
    catalog: MetricCatalog,
    *,
    machines: int = 4,
    minutes: float = 10,
    interval_ms: int = 1000,
    seed: int = 3,
) -> ReadingColumns:
    """A slice of simulated readings ending an hour ago (inside the clock-skew window)."""
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    config = FleetConfig(
        factories=1,
        machines_per_factory=machines,
        hours=minutes / 60,
        interval_ms=interval_ms,
        seed=seed,
        start=start,
    )
    return ReadingColumns.concat(list(FleetSimulator(config, catalog).chunks()))


@pytest.fixture(scope="session")
def simulate(catalog: MetricCatalog) -> Callable[..., ReadingColumns]:
    """simulate(machines=, minutes=, interval_ms=, seed=) -> ReadingColumns."""
    return lambda **kwargs: simulated(catalog, **kwargs)
