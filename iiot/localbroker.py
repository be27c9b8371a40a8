"""Start and stop a private mosquitto on 127.0.0.1 for local runs and tests.

The platform's local run and its tests never rely on a system broker: each starts its own, on a
free loopback port with a throwaway configuration (no persistence, anonymous access only from
loopback), and stops it by PID.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class BrokerError(RuntimeError):
    """mosquitto is missing or did not start."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Mosquitto:
    """A running private broker; `url` is what `--broker` options take."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Start again on the same port (for outage tests: stop, wait, restart)."""
        self.stop()
        self.process = _spawn(self.port, self.log_path.parent)


def _binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not found:
        raise BrokerError(
            "mosquitto is not installed: run `scripts/bootstrap.sh demo` as root, "
            "or `sudo apt-get install mosquitto`"
        )
    return found


def _spawn(port: int, directory: Path) -> subprocess.Popen[bytes]:
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 1000000\n"
        "max_inflight_messages 0\n"
        "message_size_limit 0\n"
        f"log_dest file {directory / 'mosquitto.log'}\n"
    )
    # Fixed arguments: the broker binary found on PATH and a config file written just above.
    process = subprocess.Popen(  # noqa: S603
        [_binary(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (directory / "mosquitto.log").read_text(errors="replace")[-500:]
            raise BrokerError(f"mosquitto exited with {process.returncode}: {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        time.sleep(0.05)
    process.kill()
    raise BrokerError(f"mosquitto did not listen on 127.0.0.1:{port} within 10 s")


@contextlib.contextmanager
def mosquitto(port: int | None = None) -> Iterator[Mosquitto]:
    """A private broker for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="iiot-mosquitto-") as directory:
        chosen = port or free_port()
        broker = Mosquitto(
            chosen, _spawn(chosen, Path(directory)), Path(directory) / "mosquitto.log"
        )
        try:
            yield broker
        finally:
            broker.stop()
