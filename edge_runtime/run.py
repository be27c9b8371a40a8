"""The run loop of both gateway components: run until signalled, restart on a new configuration.

`run_until_signalled(make)` builds the component with `make()`, starts it and waits for SIGTERM
(what Greengrass sends to stop a component) or SIGINT (Ctrl-C), then stops it cleanly. With
`watch`, the component also restarts in-process when a configuration update is applied: `make()`
runs again and reads the new configuration. On a gateway the watch is
`edge_runtime.ipc.ConfigurationWatch`, which refuses an invalid update before it is applied, so
the restart only ever sees a configuration that validated.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Protocol

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Python runs signal handlers in the main thread, and only between bytecodes: a signal the
# kernel hands to another thread (an MQTT or ingest thread) would never wake an untimed wait.
_SIGNAL_CHECK_S = 0.25


class Component(Protocol):
    def start(self) -> None:
        """Connect and run in background threads; return once running."""

    def stop(self) -> None:
        """Stop the threads, drain what is pending and disconnect."""


class Watch(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def run_until_signalled(
    make: Callable[[], Component],
    *,
    watch: Callable[[Callable[[], None]], Watch] | None = None,
    stopped: threading.Event | None = None,
    signals: Sequence[signal.Signals] = STOP_SIGNALS,
) -> None:
    """Run `make()`'s component until one of `signals` arrives or `stopped` is set.

    `watch(on_change)` makes a configuration watch that calls `on_change()` after an update is
    applied: the component is then stopped and made again. On return the previous signal
    handlers are back and `stopped` is set.
    """
    stopped = stopped or threading.Event()
    wake = threading.Event()  # a stop or an applied configuration change

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()
        wake.set()

    def relay_stop() -> None:  # `stopped` may be set by another thread than a signal handler
        stopped.wait()
        wake.set()

    previous: dict[signal.Signals, Any] = {sig: signal.signal(sig, handle) for sig in signals}
    threading.Thread(target=relay_stop, name="edge-runtime-stop", daemon=True).start()
    active = watch(wake.set) if watch is not None else None
    try:
        if active is not None:
            active.start()
        while True:
            wake.clear()
            if stopped.is_set():  # checked after clear(): a stop in between is not lost
                break
            component = make()
            component.start()
            try:
                while not wake.wait(_SIGNAL_CHECK_S):
                    pass
            finally:
                component.stop()
            if not stopped.is_set():
                log.info("configuration changed; restarting the component with it")
    finally:
        if active is not None:
            active.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stopped.set()  # ends the relay thread
