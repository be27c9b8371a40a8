"""The FailurePredictor's input queue: control messages (operator confirmations, maintenance)
overtake a backlog of readings, and the readings waiting stay within a byte bound on any input
(nothing slows Greengrass IPC or QoS 0): past it the oldest are dropped, acknowledged and
counted, never held in memory."""

from __future__ import annotations

import threading
import time

from failure_predictor.main import InputQueue, LocalBusCounts

CONFIRMATIONS = "factory/F1/shutdown/confirmations"


def recording_queue(max_bytes: int = 1 << 20) -> tuple[InputQueue, list[str], threading.Event]:
    inputs = InputQueue(max_bytes=max_bytes)
    handled: list[str] = []
    gate = threading.Event()

    def handle(name: str, payload: bytes, ack) -> None:
        gate.wait(10)  # held until the test has queued everything
        handled.append(payload.decode())
        if ack is not None:
            ack()

    inputs.handler = handle
    inputs.is_control = lambda name: name == CONFIRMATIONS
    return inputs, handled, gate


def test_a_confirmation_overtakes_the_readings_waiting():
    inputs, handled, gate = recording_queue()
    inputs.start()
    for n in range(5):
        inputs.put("factory/F1/readings", f"reading {n}".encode(), None)
    inputs.put(CONFIRMATIONS, b"confirm", None)
    gate.set()
    inputs.stop()
    # The first reading may already be in the handler; the confirmation comes before the rest.
    assert handled.index("confirm") <= 1
    assert sorted(handled) == sorted(["confirm", *(f"reading {n}" for n in range(5))])


def test_the_backlog_is_bounded_the_oldest_readings_dropped_acknowledged_and_counted():
    inputs, handled, gate = recording_queue(max_bytes=100)
    counts = LocalBusCounts()
    acked: list[int] = []
    dropped: list[bytes] = []

    def on_dropped(name, payload, ack) -> None:
        counts.dropped_readings()
        dropped.append(payload)
        ack()

    inputs.on_dropped = on_dropped
    for n in range(10):  # 30 bytes each: at most 3 fit in 100 bytes
        inputs.put("factory/F1/readings", f"{n:030d}".encode(), lambda n=n: acked.append(n))
        assert inputs.waiting_bytes() <= 100
    inputs.put(CONFIRMATIONS, b"c" * 500, lambda: acked.append(-1))  # control: never dropped
    assert dropped == [f"{n:030d}".encode() for n in range(7)]
    assert sorted(acked) == list(range(7))
    assert counts.snapshot()["readings_dropped"] == 7
    assert counts.snapshot()["readings_payloads"] == 7  # dropped counts as handled
    inputs.start()
    gate.set()
    inputs.stop()
    assert handled[0] == "c" * 500
    assert handled[1:] == [f"{n:030d}" for n in (7, 8, 9)]
    assert sorted(acked) == [-1, *range(10)]
    assert inputs.waiting_bytes() == 0


def test_one_reading_larger_than_the_bound_is_still_handled():
    inputs, handled, gate = recording_queue(max_bytes=10)
    inputs.put("factory/F1/readings", b"x" * 50, None)
    inputs.start()
    gate.set()
    inputs.stop()
    assert handled == ["x" * 50]


def test_stopping_leaves_the_readings_waiting_and_handles_nothing_after():
    """A stop that outlasts its timeout behind a backlog does not go on handling it while the
    outbox and transport close under it (an anomaly raised then would be lost): the readings
    waiting are left unhandled and unacknowledged, a confirmation waiting is still handled,
    stop returns once the message in hand is done, and later messages are not taken."""
    inputs = InputQueue()
    handled: list[str] = []
    acked: list[int] = []
    gate, in_hand = threading.Event(), threading.Event()

    def handle(name: str, payload: bytes, ack) -> None:
        in_hand.set()
        gate.wait(10)
        time.sleep(0.2)  # still busy when the gate opens: stop must wait for it
        handled.append(payload.decode())
        ack()

    inputs.handler = handle
    inputs.is_control = lambda name: name == CONFIRMATIONS
    inputs.start()
    for n in range(5):
        inputs.put("factory/F1/readings", f"reading {n}".encode(), lambda n=n: acked.append(n))
    assert in_hand.wait(10)  # reading 0 is in the handler, held by the gate
    inputs.put(CONFIRMATIONS, b"confirm", lambda: acked.append(-1))

    def release_once_cleared() -> None:  # stop's first wait has run out and cleared readings
        while inputs.waiting_bytes():
            time.sleep(0.01)
        gate.set()

    release = threading.Thread(target=release_once_cleared)
    release.start()
    left = inputs.stop(timeout=0.05)
    assert left == 4
    assert (handled, acked) == (["reading 0", "confirm"], [0, -1])
    release.join()
    inputs.put("factory/F1/readings", b"late", lambda: acked.append(-2))
    assert (handled, acked) == (["reading 0", "confirm"], [0, -1])
    assert (inputs.waiting_bytes(), inputs.refused) == (0, 1)


def test_a_stop_that_runs_out_of_time_begins_nothing_waiting_after_it_returns():
    """Past both waits (a message in hand that does not finish), the confirmation waiting is
    left too: handled after stop returned, its shutdown decision would find the transport
    closed."""
    inputs, handled, gate = recording_queue()
    in_hand = threading.Event()
    handle = inputs.handler
    assert handle is not None

    def signalling(name: str, payload: bytes, ack) -> None:
        in_hand.set()
        handle(name, payload, ack)

    inputs.handler = signalling
    inputs.start()
    inputs.put("factory/F1/readings", b"reading 0", None)
    assert in_hand.wait(10)  # held by the gate through both of stop's waits
    inputs.put(CONFIRMATIONS, b"confirm", None)
    assert inputs.stop(timeout=0.01, finish_timeout=0.01) == 1
    gate.set()
    assert inputs._thread is not None
    inputs._thread.join(10)
    assert not inputs._thread.is_alive()
    assert handled == ["reading 0"]
