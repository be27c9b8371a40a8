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
    """A private broker bound to 127.0.0.1; `url` is what `--broker` options take.

    `persistent` keeps sessions and queued messages across `stop()`/`start()` (outage tests).
    """

    port: int
    directory: Path
    persistent: bool = False
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, *, persistent: bool = False, port: int | None = None) -> Mosquitto:
        """Start one in a fresh directory; `close()` stops it and removes the directory."""
        # Started as root, mosquitto drops to its own user: its log and persistence files need
        # a directory that user can write (a private temporary directory is not).
        directory = Path(tempfile.mkdtemp(prefix="iiot-mosquitto-"))
        directory.chmod(0o777)
        broker = cls(port or free_port(), directory, persistent)
        broker.start()
        return broker

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def start(self) -> None:
        config = self.directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "max_inflight_messages 0\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "message_size_limit 0\n"
            f"persistence {'true' if self.persistent else 'false'}\n"
            f"persistence_location {self.directory}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.log_path}\n"
        )
        # Fixed arguments: the broker binary found on PATH and the config file written above.
        self.process = subprocess.Popen(  # noqa: S603
            [_binary(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (
                    self.log_path.read_text(errors="replace")[-500:]
                    if self.log_path.exists()
                    else ""
                )
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on 127.0.0.1:{self.port} within 10 s")

    def stop(self) -> None:
        """Stop the process this object started (by its PID), keeping the directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port (for outage tests)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


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


@contextlib.contextmanager
def mosquitto(*, persistent: bool = False, port: int | None = None) -> Iterator[Mosquitto]:
    """A private broker for the duration of the block."""
    broker = Mosquitto.create(persistent=persistent, port=port)
    try:
        yield broker
    finally:
        broker.close()
