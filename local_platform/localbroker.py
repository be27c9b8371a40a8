"""Start and stop a private mosquitto on 127.0.0.1 for local runs and tests.

The platform's local run and its tests never rely on a system broker: each starts its own, on a
free loopback port with a throwaway configuration (no persistence, anonymous access only from
loopback), and stops it by PID.

With `users` the broker refuses anonymous clients and checks a password file (hashed by
`mosquitto_passwd`, from the mosquitto package); with `tls` its listener speaks TLS only (the
certificate and key files are the caller's; `require_certificate` asks clients for one signed by
the CA), and `url` is mqtts://.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path


class BrokerError(RuntimeError):
    """mosquitto is missing or did not start."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class BrokerTls:
    """PEM files for a TLS listener; `require_certificate` makes client certificates
    mandatory (signed by `ca_file`)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


@dataclass
class Mosquitto:
    """A private broker bound to 127.0.0.1; `url` is what `--broker` options take.

    `persistent` keeps sessions and queued messages across `stop()`/`start()` (outage tests);
    `users` (name -> password) turns anonymous access off; `tls` makes the listener TLS only.
    """

    port: int
    directory: Path
    persistent: bool = False
    process: subprocess.Popen[bytes] | None = None
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    tls: BrokerTls | None = None
    log_subscriptions: bool = False

    @classmethod
    def create(
        cls,
        *,
        persistent: bool = False,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        tls: BrokerTls | None = None,
        log_subscriptions: bool = False,
    ) -> Mosquitto:
        """Start one in a fresh directory; `close()` stops it and removes the directory.
        `log_subscriptions` logs every SUBSCRIBE (`subscribed()` reads them)."""
        # Started as root, mosquitto drops to its own user: its log and persistence files need
        # a directory that user can write (a private temporary directory is not).
        directory = Path(tempfile.mkdtemp(prefix="iiot-mosquitto-"))
        directory.chmod(0o777)
        broker = cls(
            port or free_port(),
            directory,
            persistent,
            users=dict(users or {}),
            tls=tls,
            log_subscriptions=log_subscriptions,
        )
        try:
            broker.start()
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return broker

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def _access_lines(self) -> str:
        lines = ""
        if self.users:
            passwords = self.directory / "passwords"
            # Plain "name:password" lines hashed in place: no password on a command line.
            passwords.write_text("".join(f"{name}:{pw}\n" for name, pw in self.users.items()))
            passwords.chmod(0o644)  # mosquitto's own user reads it
            hashed = subprocess.run(  # noqa: S603 - fixed arguments
                [_binary("mosquitto_passwd"), "-U", str(passwords)],
                capture_output=True,
                text=True,
                check=False,
            )
            if hashed.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed: {hashed.stderr.strip()}")
            lines += f"allow_anonymous false\npassword_file {passwords}\n"
        else:
            lines += "allow_anonymous true\n"
        if self.tls is not None:
            lines += (
                f"cafile {self.tls.ca_file}\n"
                f"certfile {self.tls.cert_file}\n"
                f"keyfile {self.tls.key_file}\n"
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}\n"
            )
        return lines

    def start(self) -> None:
        config = self.directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n" + self._access_lines() + "max_inflight_messages 0\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "message_size_limit 0\n"
            f"persistence {'true' if self.persistent else 'false'}\n"
            f"persistence_location {self.directory}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.log_path}\n"
            + (
                "".join(
                    f"log_type {kind}\n"
                    for kind in ("error", "warning", "notice", "information", "subscribe")
                )
                if self.log_subscriptions
                else ""
            )
        )
        # Fixed arguments: the broker binary found on PATH and the config file written above.
        # A session of its own: a Ctrl-C at the terminal reaches its owner, which stops it.
        self.process = subprocess.Popen(  # noqa: S603
            [_binary("mosquitto"), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
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

    def subscribed(self, client_prefix: str, topic: str) -> bool:
        """Whether a client whose id starts with `client_prefix` has subscribed to `topic`
        (needs `log_subscriptions`)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return False
        # "<time>: <client id> <qos> <topic>"
        for line in lines:
            parts = line.split(" ")
            if len(parts) >= 4 and parts[1].startswith(client_prefix) and parts[-1] == topic:
                return True
        return False

    def restart(self) -> None:
        """Stop and start again on the same port (for outage tests)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _binary(name: str) -> str:
    """mosquitto (in /usr/sbin) or mosquitto_passwd (in /usr/bin), both from the mosquitto
    package."""
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/sbin", "/usr/bin") if Path(f"{d}/{name}").exists()), None
    )
    if not found:
        raise BrokerError(
            f"{name} is not installed: run `scripts/bootstrap.sh demo` as root, "
            "or `sudo apt-get install mosquitto`"
        )
    return found


@contextlib.contextmanager
def mosquitto(
    *,
    persistent: bool = False,
    port: int | None = None,
    users: Mapping[str, str] | None = None,
    tls: BrokerTls | None = None,
) -> Iterator[Mosquitto]:
    """A private broker for the duration of the block."""
    broker = Mosquitto.create(persistent=persistent, port=port, users=users, tls=tls)
    try:
        yield broker
    finally:
        broker.close()
