"""Accelerated time: the simulated clock every process of a connected run shares.

Simulated time runs `speed` times faster than the wall clock from `wall0` (a Unix time every
process is given) at `start_ms` (the first live reading's event time). The sensors publish a
reading when the simulated clock reaches its timestamp; faults, the lake's schedule and the
model update are planned in simulated time and happen at the matching wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class SimClock:
    start_ms: int  # simulated time at wall0
    wall0: float  # Unix seconds
    speed: float  # simulated seconds per wall second

    def sim_ms(self, wall: float | None = None) -> int:
        """Simulated time (UTC ms) at `wall` (default: now)."""
        wall = time.time() if wall is None else wall
        return self.start_ms + int((wall - self.wall0) * self.speed * 1000)

    def wall(self, sim_ms: float) -> float:
        """The wall time (Unix seconds) at which the simulated clock shows `sim_ms`."""
        return self.wall0 + (sim_ms - self.start_ms) / 1000 / self.speed

    def sim_seconds(self, wall_seconds: float) -> float:
        return wall_seconds * self.speed

    def wall_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.speed

    def as_args(self) -> list[str]:
        return [
            "--start-ms",
            str(self.start_ms),
            "--wall0",
            repr(self.wall0),
            "--speed",
            repr(self.speed),
        ]
