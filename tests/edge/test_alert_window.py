"""Buffer alerts at most once per interval, each with the count since the previous one."""

from __future__ import annotations

from sensor_buffer.alert_window import AlertWindow


def test_the_counts_of_successive_alerts_add_up_to_every_event() -> None:
    now = [1000.0]
    window = AlertWindow(60.0, clock=lambda: now[0])
    assert window.take_due() is None  # nothing happened
    window.add(1280, ["reject_new"])
    first = window.take_due()
    assert first is not None
    assert (first.count, first.causes, first.events) == (1280, ("reject_new",), 1)
    total = 0
    for _ in range(38):  # the rest of the minute: 47,614 more readings rejected
        now[0] += 1.0
        window.add(1253, ["reject_new"])
        total += 1253
        assert window.take_due() is None  # suppressed, but counted
    window.add(1, ["drop_oldest"])
    now[0] += 30.0
    second = window.take_due()
    assert second is not None
    assert second.count == total + 1 == 47_615
    assert second.causes == ("drop_oldest", "reject_new")
    assert first.count + second.count == 48_895  # every rejected reading, once
    assert window.take_due() is None


def test_force_flushes_what_the_interval_held_back() -> None:
    now = [0.0]
    window = AlertWindow(60.0, clock=lambda: now[0])
    window.add(1)
    assert window.take_due() is not None
    window.add(5)
    assert window.take_due() is None
    flushed = window.take_due(force=True)
    assert flushed is not None
    assert flushed.count == 5
    assert window.take_due(force=True) is None
