"""What the predictor needs from a transport: subscribe with a callback, publish bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

MessageHandler = Callable[[str, bytes], None]


class Transport(Protocol):
    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None: ...

    def publish_local(self, topic: str, payload: bytes) -> None: ...

    def publish_cloud(self, topic: str, payload: bytes) -> None: ...

    def stop(self) -> None: ...


class MemoryTransport:
    """In-process transport for tests and local runs: records what was published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.on_message: MessageHandler | None = None
        self.topics: tuple[str, ...] = ()

    def start(self, topics: tuple[str, ...], on_message: MessageHandler) -> None:
        self.topics, self.on_message = topics, on_message

    def deliver(self, topic: str, payload: bytes) -> None:
        if self.on_message is not None:
            self.on_message(topic, payload)

    def publish_local(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))

    def publish_cloud(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))

    def stop(self) -> None:
        self.on_message = None
