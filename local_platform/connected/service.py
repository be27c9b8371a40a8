"""What every long-running process of a connected run shares: stop on SIGTERM, report status.

A service loop runs `step()` until SIGTERM (or SIGINT) and writes its counters to
`status/<name>.json` every half second and once more when it stops, so the runner can tell
when the pipeline has drained and the reconciliation can read what each part did.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local_platform.connected.plan import write_json

STATUS_EVERY_S = 0.5


class Service:
    def __init__(self, status_path: Path) -> None:
        self.status_path = status_path
        self.stopping = threading.Event()
        self.counters: dict[str, Any] = {}
        self._last_status = 0.0
        self.started = time.time()

        def stop(_signum: int, _frame: Any) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def write_status(self, *, force: bool = False, **extra: Any) -> None:
        now = time.time()
        if not force and now - self._last_status < STATUS_EVERY_S:
            return
        self._last_status = now
        write_json(
            self.status_path,
            {"updated": now, "stopped": self.stopping.is_set(), **self.counters, **extra},
        )

    def run(self, step: Callable[[], float], *, on_stop: Callable[[], None] | None = None) -> None:
        """Call `step()` (which returns the seconds to wait before the next call) until
        stopped; then `on_stop()` and a final status."""
        try:
            while not self.stopping.is_set():
                wait = step()
                self.write_status()
                if wait > 0:
                    self.stopping.wait(wait)
        finally:
            if on_stop is not None:
                on_stop()
            self.write_status(force=True)
