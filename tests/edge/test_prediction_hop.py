"""The predictor -> buffer hop is at least once, and each prediction is stored once by key.

The FailurePredictor hands each prediction to the local bus with a confirmation
(`Transport.publish_local_confirmed`: MQTT QoS 1, counted by `failure_predictor.main.LocalBusCounts`
on the broker's PUBACK); the SensorBuffer acknowledges a prediction only once its micro-batch is
committed. Through a real mosquitto and `iiot edge run` killed with SIGKILL in the middle of a
stream of predictions and restarted later, with predictions published while it is down: every
prediction the broker confirmed is stored and uploaded, each key exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future
from typing import Any

import pytest
from failure_predictor.main import LocalBusCounts
from failure_predictor.messages import PREDICTIONS, Prediction, encoder, topic

from edge_runtime.mqtt import MqttTransport
from edge_runtime.transport import MemoryTransport
from iiot.topics import SENSOR_DATA
from tests.edge.mqtt_helpers import Collector, Key, uploaded, wait_for
from tests.edge.test_risk_end_to_end import counter

TOPIC = topic(PREDICTIONS, "F01")
MACHINES = [f"F01-M00{i}" for i in range(1, 6)]


def prediction(i: int, t0: int, version: str = "v3") -> bytes:
    return encoder.encode(
        Prediction(
            factory_id="F01",
            machine_id=MACHINES[i % len(MACHINES)],
            timestamp=t0 + (i // len(MACHINES)) * 1000,
            probability=round((i % 97) / 100, 2),
            model_version=version,
            backend="compiled",
            alert=False,
        )
    )


def key(i: int, t0: int) -> Key:
    machine = MACHINES[i % len(MACHINES)]
    series = ("F01", machine, f"{machine}-failure_predictor", "failure_probability", "probability")
    return (series, t0 + (i // len(MACHINES)) * 1000, round((i % 97) / 100, 2))


@pytest.mark.slow
def test_predictions_sent_while_the_buffer_is_killed_are_stored_once_each(
    broker_factory, component_factory
) -> None:
    local, cloud = broker_factory(), broker_factory(persistent=True)
    collector = Collector(cloud.port, (SENSOR_DATA,), "cloud-hop")
    # Deadband 0: every prediction is stored, so every key must arrive.
    component = component_factory(local.url, cloud.url, "--prediction-deadband", "0")
    component.start(wait_port=local.port)
    transport = MqttTransport(local.url, None, "predictor-hop", persistent_session=False)
    transport.start((), lambda *_: None)  # a publisher only, as the predictor is for these
    counts = LocalBusCounts()
    t0 = int(time.time() * 1000) - 3_600_000
    total = 1000

    def publish(first: int, last: int, pause_s: float = 0.0) -> None:
        for i in range(first, last):
            counts.publish_prediction(transport, TOPIC, prediction(i, t0))
            if pause_s:
                time.sleep(pause_s)

    try:
        wait_for(lambda: _connected(transport), 30, "the predictor's connection")
        publish(0, 200)
        wait_for(lambda: counts.confirmed == 200, 30, "the first PUBACKs")
        # SIGKILL while a stream of predictions is being committed
        stream = threading.Thread(target=publish, args=(200, 500, 0.002))
        stream.start()
        wait_for(lambda: counts.confirmed >= 300, 30, "the stream to start")
        component.kill()
        stream.join(30)
        at_kill = counter(component.db, "predictions_converted")
        publish(500, 800)  # the buffer is down: the broker keeps them for its session
        wait_for(lambda: counts.confirmed == 800, 30, "the PUBACKs while the buffer is down")
        assert counter(component.db, "predictions_converted") == at_kill  # nothing took them
        component.start(wait_port=local.port)
        publish(800, total)
        wait_for(lambda: counts.confirmed == total, 30, "every PUBACK")
        expected = Counter(key(i, t0) for i in range(total))
        wait_for(lambda: uploaded(collector.batches()) == expected, 120, "every key uploaded")
    finally:
        transport.stop()
        component.stop()
        collector.close()

    assert counts.refused == 0
    assert at_kill < total
    # each prediction stored once: a redelivery of a committed one is recognised by its digest
    assert counter(component.db, "predictions_converted") == total
    assert counts.snapshot()["predictions_confirmed_by_version"] == {"v3": total}


def _connected(transport: MqttTransport) -> bool:
    probe = transport.publish_local_confirmed("factory/F01/probe", b"{}")
    try:
        probe.result(5)
    except Exception:
        return False
    return True


def test_refused_predictions_are_counted_not_confirmed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import failure_predictor.main

    # a gateway 5 s after boot: the monotonic clock starts near zero
    monkeypatch.setattr(failure_predictor.main.time, "monotonic", lambda: 5.0)
    transport = MemoryTransport()
    counts = LocalBusCounts()
    transport.fail_next_local = 2
    with caplog.at_level(logging.WARNING, logger="failure_predictor"):
        for i in range(5):
            counts.publish_prediction(transport, TOPIC, prediction(i, 0, version=f"v{i % 2}"))
    # the first refusal is logged at once (however soon after boot), the second within the
    # minute is only counted
    refusals = [r for r in caplog.records if "not taken by the local bus" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].refused_since_last_log == 1
    snapshot = counts.snapshot()
    assert snapshot["predictions_published"] == 5
    assert snapshot["predictions_refused"] == 2
    assert snapshot["predictions_confirmed"] == 3
    assert snapshot["predictions_in_flight"] == 0
    # the first two were refused: v0, v1 go; v0 (i=2), v1 (i=3), v0 (i=4) confirmed
    assert snapshot["predictions_confirmed_by_version"] == {"v0": 2, "v1": 1}
    assert len(transport.local) == 3


def test_a_transport_that_raises_counts_as_refused() -> None:
    class Raising(MemoryTransport):
        def publish_local_confirmed(self, topic: str, payload: bytes) -> Future[None]:
            raise ConnectionError("gone")

    counts = LocalBusCounts()
    counts.publish_prediction(Raising(), TOPIC, prediction(0, 0))
    assert (counts.confirmed, counts.refused) == (0, 1)


def test_on_greengrass_the_nucleus_reply_confirms_a_local_publish() -> None:
    """IPC: the future follows the nucleus's reply to PublishToTopic (in-memory delivery to the
    subscribers running then: no queue, no session), and fails with its error."""
    from edge_runtime.ipc import IpcTransport

    replies: list[Future[Any]] = []

    class Client:
        def publish_to_topic_async(self, *, topic: str, publish_message: Any) -> Future[Any]:
            reply: Future[Any] = Future()
            replies.append(reply)
            return reply

        def close(self) -> None:
            pass

    transport = IpcTransport(client_factory=Client)
    transport.start((), lambda *_: None)
    accepted = transport.publish_local_confirmed(TOPIC, b"{}")
    refused = transport.publish_local_confirmed(TOPIC, b"{}")
    assert not accepted.done()
    replies[0].set_result(None)
    replies[1].set_exception(PermissionError("not authorized"))
    assert accepted.result(1) is None
    with pytest.raises(PermissionError):
        refused.result(1)
    transport.stop()
