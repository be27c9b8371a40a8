"""Edge threshold checks from the metric catalog, with debounce and hysteresis.

Per series: an alert RAISES after `debounce` consecutive readings beyond a limit and CLEARS once
a reading is back inside the limit by `hysteresis`, so a value hovering at a limit does not flap.
The check is vectorized: a micro-batch in which no series is beyond a limit, in alarm, or
counting towards one costs a few array operations; only the series that need it are walked
reading by reading, in arrival order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from iiot.anomaly import Anomaly
from iiot.catalog import EdgeThresholds
from iiot.contract import Float64Array, Int32Array, Int64Array, SeriesKey

NORMAL, HIGH, LOW = 0, 1, -1


class ThresholdChecker:
    """Holds the per-series alarm state; `check` returns the RAISED/CLEARED anomalies."""

    def __init__(
        self,
        thresholds: Mapping[str, EdgeThresholds],
        series: Callable[[int], SeriesKey],
    ) -> None:
        self.thresholds = dict(thresholds)
        self._series = series
        self._high = np.empty(0)
        self._low = np.empty(0)
        self._hyst = np.empty(0)
        self._debounce = np.empty(0, dtype=np.int32)
        self.state = np.empty(0, dtype=np.int8)
        self.run = np.empty(0, dtype=np.int32)  # >0: consecutive above max, <0: below min
        self.raised = 0
        self.cleared = 0

    def _ensure(self, max_sid: int) -> None:
        """Limits for series ids seen for the first time (each series is looked up once)."""
        known = len(self.state)
        if max_sid < known:
            return
        extra = range(known, max_sid + 1)
        edges = [self.thresholds.get(self._series(sid).metric) for sid in extra]
        self._high = np.concatenate(
            [self._high, [np.inf if e is None or e.max is None else e.max for e in edges]]
        )
        self._low = np.concatenate(
            [self._low, [-np.inf if e is None or e.min is None else e.min for e in edges]]
        )
        self._hyst = np.concatenate(
            [self._hyst, [0.0 if e is None else e.hysteresis for e in edges]]
        )
        self._debounce = np.concatenate(
            [self._debounce, np.array([1 if e is None else e.debounce for e in edges], np.int32)]
        )
        self.state = np.concatenate([self.state, np.zeros(len(extra), dtype=np.int8)])
        self.run = np.concatenate([self.run, np.zeros(len(extra), dtype=np.int32)])

    def check(self, sid: Int32Array, ts: Int64Array, value: Float64Array) -> list[Anomaly]:
        """Advance every series' state over the readings (arrival order); return transitions."""
        if len(sid) == 0:
            return []
        self._ensure(int(sid.max()))
        high, low = self._high[sid], self._low[sid]
        attention = (value > high) | (value < low) | (self.state[sid] != NORMAL)
        attention |= self.run[sid] != 0
        if not attention.any():
            return []
        involved = np.unique(sid[attention])
        positions = np.flatnonzero(np.isin(sid, involved))
        return self._walk(positions, sid, ts, value)

    def _walk(
        self,
        positions: Sequence[int] | Int64Array,
        sid: Int32Array,
        ts: Int64Array,
        value: Float64Array,
    ) -> list[Anomaly]:
        out: list[Anomaly] = []
        state, run = self.state, self.run
        for p in np.asarray(positions).tolist():
            s = int(sid[p])
            v = float(value[p])
            hi, lo, hyst, debounce = (
                float(self._high[s]),
                float(self._low[s]),
                float(self._hyst[s]),
                int(self._debounce[s]),
            )
            current = state[s]
            if current == HIGH:
                if v <= hi - hyst:
                    state[s] = NORMAL
                    run[s] = 0
                    out.append(self._anomaly(s, "THRESHOLD_HIGH", "CLEARED", v, hi, int(ts[p])))
                continue
            if current == LOW:
                if v >= lo + hyst:
                    state[s] = NORMAL
                    run[s] = 0
                    out.append(self._anomaly(s, "THRESHOLD_LOW", "CLEARED", v, lo, int(ts[p])))
                continue
            side = HIGH if v > hi else LOW if v < lo else NORMAL
            if side == NORMAL:
                run[s] = 0
                continue
            previous = int(run[s])
            if side == HIGH:
                count = previous + 1 if previous > 0 else 1
            else:
                count = -previous + 1 if previous < 0 else 1
            if count >= debounce:
                state[s] = side
                run[s] = 0
                kind = "THRESHOLD_HIGH" if side == HIGH else "THRESHOLD_LOW"
                out.append(
                    self._anomaly(s, kind, "RAISED", v, hi if side == HIGH else lo, int(ts[p]))
                )
            else:
                run[s] = count if side == HIGH else -count
        return out

    def _anomaly(
        self, sid: int, kind: str, transition: str, value: float, limit: float, ts: int
    ) -> Anomaly:
        key = self._series(sid)
        if transition == "RAISED":
            self.raised += 1
            verb = "above" if kind == "THRESHOLD_HIGH" else "below"
            message = f"{key.metric} {value:g} {key.unit} {verb} the edge limit {limit:g}"
        else:
            self.cleared += 1
            message = f"{key.metric} back to {value:g} {key.unit}, inside the limit {limit:g}"
        return Anomaly(
            factory_id=key.factory_id,
            machine_id=key.machine_id,
            sensor_id=key.sensor_id,
            metric=key.metric,
            anomaly_type=kind,
            severity="WARNING",
            value=value,
            threshold=limit,
            timestamp=ts,
            source="edge",
            state=transition,  # type: ignore[arg-type]
            message=message,
        )
