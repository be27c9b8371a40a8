"""A real InfluxDB 1.x server (Debian's `influxd`) on 127.0.0.1: the connected run's time-series
database and the writer's tests' (one launcher for both).

`start_influxd(root)` starts it on free loopback ports with its files under `root` and waits
for `/ping`; `stop()` stops it by PID and `restart()` starts it again on the same ports and
files (the outage fault). `V2WriteRelay` serves the v2 write API the writer Lambda calls
(`influxdb-client`, as Timestream for InfluxDB answers it) on top of the 1.x `/write`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from local_platform.connected.local_http import LocalHttpServer

CONFIG = """
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
  logging-enabled = false
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[retention]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  pprof-enabled = false
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class InfluxServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def query(self, influxql: str, database: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL; return the result's series (timestamps as epoch milliseconds)."""
        params = {"q": influxql, "epoch": "ms"}
        if database:
            params["db"] = database
        data = urllib.parse.urlencode(params).encode()
        # http://127.0.0.1 URLs built here, never from input
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as response:  # noqa: S310
            body = json.loads(response.read())
        result = body["results"][0]
        if "error" in result:
            raise RuntimeError(result["error"])
        return list(result.get("series", []))

    config_path: Path | None = None

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self, *, startup_timeout_s: float = 60.0) -> None:
        """Start again on the same ports and files (after `stop()`)."""
        assert self.config_path is not None, "restart() needs a server made by start_influxd"
        self.stop()
        self.process = _spawn(self.config_path, self.log_path)
        _wait_for_ping(self, startup_timeout_s)

    def running(self) -> bool:
        return self.process.poll() is None


def _spawn(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("influxd")
    if binary is None:
        raise RuntimeError("influxd is not installed: `apt-get install influxdb` (Debian)")
    with log_path.open("ab") as log:
        # A session of its own: a Ctrl-C at the terminal reaches the owner, which stops it.
        return subprocess.Popen(  # noqa: S603 - the binary on PATH and our own config file
            [binary, "-config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_ping(server: InfluxServer, startup_timeout_s: float) -> None:
    deadline = time.monotonic() + startup_timeout_s
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"influxd exited ({server.process.returncode}): {server.log_path.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/ping", timeout=2) as response:  # noqa: S310
                if response.status == 204:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"influxd did not answer /ping: {server.log_path.read_text()[-2000:]}"
            )
        time.sleep(0.2)


def start_influxd(root: Path, *, startup_timeout_s: float = 60.0) -> InfluxServer:
    http_port, rpc_port = free_port(), free_port()
    config = root / "influxdb.conf"
    config.write_text(CONFIG.format(root=root, http_port=http_port, rpc_port=rpc_port))
    log_path = root / "influxd.log"
    process = _spawn(config, log_path)
    server = InfluxServer(f"http://127.0.0.1:{http_port}", process, log_path, config)
    _wait_for_ping(server, startup_timeout_s)
    return server


class V2WriteRelay:
    """The v2 write API (`POST /api/v2/write?org=&bucket=&precision=`, what `influxdb-client`
    and so the writer Lambda call) relayed to a 1.x server's `/write`, the bucket naming the
    database: the real handler writes into a real InfluxDB. Keeps every relayed line."""

    def __init__(self, influx_url: str) -> None:
        self.lines: list[str] = []
        self.keep_lines = True
        self.unavailable = 0
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                target = urllib.parse.urlencode(
                    {"db": query["bucket"][0], "precision": query.get("precision", ["ns"])[0]}
                )
                request = urllib.request.Request(  # noqa: S310 - the loopback server's URL
                    f"{influx_url}/write?{target}", data=body, method="POST"
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                        status, answer = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, answer = exc.code, exc.read()
                except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                    # The server is down: what a load balancer in front of it answers.
                    status, answer = 503, f'{{"message": "InfluxDB unavailable: {exc}"}}'.encode()
                    relay.unavailable += 1
                if status < 300 and relay.keep_lines:
                    relay.lines.extend(body.decode().splitlines())
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = LocalHttpServer(Handler)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()
