"""The Greengrass IPC transport with a fake IPC client; it is the tree's only way to Greengrass."""

from __future__ import annotations

import ast
from concurrent.futures import Future
from pathlib import Path
from typing import ClassVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Every first-party source folder (tests excepted).
SOURCES = (
    "iiot",
    "config",
    "edge_runtime",
    "edge_components",
    "local_platform",
    "ml_pipeline",
    "spark_jobs",
    "kda_sql",
    "lambdas",
    "stacks",
    "bench",
)


def importers_of(package: str) -> list[str]:
    found = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(name.split(".")[0] == package for name in names):
                    found.append(str(path.relative_to(ROOT)))
                    break
    return found


def test_only_the_runtimes_ipc_module_imports_awsiot_and_only_its_mqtt_module_awscrt() -> None:
    assert importers_of("awsiot") == ["edge_runtime/ipc.py"]
    assert importers_of("awscrt") == ["edge_runtime/mqtt.py"]


class FakeIpcClient:
    """Stands in for GreengrassCoreIPCClientV2: records calls, hands out futures."""

    instances: ClassVar[list[FakeIpcClient]] = []

    def __init__(self) -> None:
        self.subscriptions: dict[str, object] = {}
        self.local: list[tuple[str, bytes]] = []
        self.local_replies: list[Future] = []
        self.cloud: list[tuple[str, str, bytes, Future]] = []
        FakeIpcClient.instances.append(self)

    def subscribe_to_topic(self, *, topic, receive_mode, on_stream_event, on_stream_error):
        self.subscriptions[topic] = on_stream_event
        return object(), type("Operation", (), {"close": lambda self: None})()

    def publish_to_topic_async(self, *, topic, publish_message):
        self.local.append((topic, publish_message.binary_message.message))
        reply: Future = Future()
        self.local_replies.append(reply)
        return reply

    def publish_to_iot_core_async(self, *, topic_name, qos, payload):
        future: Future = Future()
        self.cloud.append((topic_name, qos, payload, future))
        return future

    def close(self) -> None:
        pass


def test_greengrass_ipc_transport_maps_messages_and_pubacks() -> None:
    from awsiot.greengrasscoreipc.model import (
        BinaryMessage,
        MessageContext,
        SubscriptionResponseMessage,
    )

    from edge_runtime.ipc import IpcTransport

    transport = IpcTransport(client_factory=FakeIpcClient)
    got: list[tuple[str, bytes, object]] = []
    transport.start(("factory/F1/readings",), lambda t, p, a: got.append((t, p, a)))
    client = FakeIpcClient.instances[-1]
    client.subscriptions["factory/F1/readings"](
        SubscriptionResponseMessage(
            binary_message=BinaryMessage(
                message=b"[]", context=MessageContext(topic="factory/F1/readings")
            )
        )
    )
    assert got == [("factory/F1/readings", b"[]", None)]
    transport.publish_local("factory/local/alerts", b"alert")
    assert client.local == [("factory/local/alerts", b"alert")]
    future = transport.publish_cloud("factory/sensor/data", b"batch")
    topic, qos, payload, ipc_future = client.cloud[0]
    assert (topic, payload) == ("factory/sensor/data", b"batch")
    assert qos == "1"  # QOS.AT_LEAST_ONCE
    assert not future.done()
    ipc_future.set_result(None)  # IoT Core's PUBACK arrived
    assert future.result(1) is None
    failing = transport.publish_cloud("factory/sensor/data", b"batch")
    client.cloud[1][3].set_exception(TimeoutError("no PUBACK"))
    with pytest.raises(TimeoutError):
        failing.result(1)
    # Local pub/sub with a confirmation: the nucleus's reply completes it, its error fails it.
    confirmed = transport.publish_local_confirmed("factory/local/predictions", b"p")
    assert client.local[-1] == ("factory/local/predictions", b"p")
    assert not confirmed.done()
    client.local_replies[-1].set_result(object())
    assert confirmed.result(1) is None
    refused = transport.publish_local_confirmed("factory/local/predictions", b"q")
    client.local_replies[-1].set_exception(ConnectionError("nucleus gone"))
    with pytest.raises(ConnectionError):
        refused.result(1)
    transport.stop()
    not_started = IpcTransport(client_factory=FakeIpcClient)
    with pytest.raises(ConnectionError, match="not started"):
        not_started.publish_local_confirmed("factory/local/predictions", b"r").result(1)
