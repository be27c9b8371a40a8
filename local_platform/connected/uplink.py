"""A factory's uplink to the cloud: a TCP relay that can be cut (the network fault).

Each gateway reaches the "IoT Core" broker through its factory's uplink on 127.0.0.1. `down()`
drops every open connection and refuses new ones (the site lost its internet connection);
`up()` restores it. One thread relays all uplinks with a selector: the traffic is a gateway's
compressed batches, a few tens of kilobytes per second.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Pair:
    uplink: str
    gateway: socket.socket
    cloud: socket.socket
    to_cloud: bytearray = field(default_factory=bytearray)
    to_gateway: bytearray = field(default_factory=bytearray)


@dataclass
class Uplink:
    name: str
    listener: socket.socket
    target: tuple[str, int]
    up: bool = True
    connections: int = 0
    refused: int = 0
    bytes_up: int = 0
    outages: list[tuple[float, float | None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port


class Uplinks:
    """Every factory's uplink, relayed by one thread."""

    def __init__(self, cloud_port: int) -> None:
        self.cloud_port = cloud_port
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self.uplinks: dict[str, Uplink] = {}
        self._pairs: list[_Pair] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uplinks", daemon=True)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    def add(self, name: str) -> Uplink:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        uplink = Uplink(name, listener, ("127.0.0.1", self.cloud_port))
        self.uplinks[name] = uplink
        self._selector.register(listener, selectors.EVENT_READ, ("accept", uplink))
        return uplink

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(5)
        for pair in list(self._pairs):
            self._close(pair)
        for uplink in self.uplinks.values():
            with contextlib.suppress(OSError):
                uplink.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def down(self, name: str) -> None:
        with self._lock:
            uplink = self.uplinks[name]
            uplink.up = False
            uplink.outages.append((time.time(), None))
        self._wake()

    def restore(self, name: str) -> None:
        with self._lock:
            uplink = self.uplinks[name]
            uplink.up = True
            if uplink.outages and uplink.outages[-1][1] is None:
                uplink.outages[-1] = (uplink.outages[-1][0], time.time())
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # ------------------------------------------------------------------------- the relay

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                for pair in list(self._pairs):
                    if not self.uplinks[pair.uplink].up:
                        self._close(pair)
            for key, events in self._selector.select(timeout=0.5):
                kind, item = key.data
                if kind == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                elif kind == "accept":
                    self._accept(item)
                else:
                    self._pump(item, key.fileobj, events)

    def _accept(self, uplink: Uplink) -> None:
        try:
            gateway, _ = uplink.listener.accept()
        except OSError:
            return
        if not uplink.up:
            uplink.refused += 1
            gateway.close()
            return
        try:
            cloud = socket.create_connection(uplink.target, timeout=5)
        except OSError:
            gateway.close()
            return
        for sock in (gateway, cloud):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(uplink.name, gateway, cloud)
        uplink.connections += 1
        self._pairs.append(pair)
        self._selector.register(gateway, selectors.EVENT_READ, ("pair", pair))
        self._selector.register(cloud, selectors.EVENT_READ, ("pair", pair))

    def _pump(self, pair: _Pair, sock: object, events: int) -> None:
        source_is_gateway = sock is pair.gateway
        source = pair.gateway if source_is_gateway else pair.cloud
        pending = pair.to_cloud if source_is_gateway else pair.to_gateway
        if events & selectors.EVENT_READ:
            try:
                data = source.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                self._close(pair)
                return
            if data == b"":
                self._close(pair)
                return
            if data:
                pending += data
                if source_is_gateway:
                    self.uplinks[pair.uplink].bytes_up += len(data)
        for buffer, target in ((pair.to_cloud, pair.cloud), (pair.to_gateway, pair.gateway)):
            while buffer:
                try:
                    sent = target.send(buffer)
                except BlockingIOError:
                    # The receiver is slow: wait until it can take more (rare: small traffic).
                    time.sleep(0.001)
                    continue
                except OSError:
                    self._close(pair)
                    return
                del buffer[:sent]

    def _close(self, pair: _Pair) -> None:
        if pair in self._pairs:
            self._pairs.remove(pair)
        for sock in (pair.gateway, pair.cloud):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()
