"""The run loop: a signal stops the component cleanly; an applied configuration restarts it."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import pytest

from edge_runtime.run import run_until_signalled


class Recorder:
    """A component that records its lifecycle and tells the test when it runs."""

    def __init__(self, events: list[str], name: str, running: threading.Event) -> None:
        self.events, self.name, self.running = events, name, running

    def start(self) -> None:
        self.events.append(f"start {self.name}")
        self.running.set()

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")


class FakeWatch:
    """Stands in for edge_runtime.ipc.ConfigurationWatch: the test applies an update."""

    def __init__(self, on_change: Callable[[], None], events: list[str]) -> None:
        self.apply_update, self.events = on_change, events

    def start(self) -> None:
        self.events.append("watch")

    def stop(self) -> None:
        self.events.append("unwatch")


def test_sigterm_stops_the_component_and_restores_the_previous_handler() -> None:
    events: list[str] = []
    running = threading.Event()
    before = signal.getsignal(signal.SIGTERM)

    def send_sigterm() -> None:
        assert running.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)  # what Greengrass sends to stop a component

    sender = threading.Thread(target=send_sigterm)
    sender.start()
    run_until_signalled(lambda: Recorder(events, "1", running))
    sender.join()
    assert events == ["start 1", "stop 1"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_applied_configuration_restarts_the_component_with_it() -> None:
    events: list[str] = []
    configurations = iter(["first", "second"])
    running = threading.Event()
    stopped = threading.Event()
    watches: list[FakeWatch] = []

    def make() -> Recorder:
        return Recorder(events, next(configurations), running)

    def watch(on_change: Callable[[], None]) -> FakeWatch:
        watches.append(FakeWatch(on_change, events))
        return watches[-1]

    def operate() -> None:
        assert running.wait(10)
        running.clear()
        watches[0].apply_update()
        assert running.wait(10)
        stopped.set()

    operator = threading.Thread(target=operate)
    operator.start()
    run_until_signalled(make, watch=watch, stopped=stopped, signals=())
    operator.join()
    assert events == [
        "watch",
        "start first",
        "stop first",
        "start second",
        "stop second",
        "unwatch",
    ]


def test_a_configuration_that_fails_to_build_ends_the_run_with_its_error() -> None:
    events: list[str] = []

    def make() -> Recorder:
        raise ValueError("factoryId is required")

    with pytest.raises(ValueError, match="factoryId"):
        run_until_signalled(make, watch=lambda on_change: FakeWatch(on_change, events), signals=())
    assert events == ["watch", "unwatch"]
