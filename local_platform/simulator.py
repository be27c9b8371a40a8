"""A deterministic factory-fleet simulator: sensor readings, failures and maintenance records.

Each machine is a pump with five sensors (temperature, vibration, pressure, rpm, flow_rate)
driven by one operating model:

* load follows the shift plan (06-14, 14-22, 22-06) and is lower at weekends; ambient
  temperature follows the day;
* components degrade before a failure: over an onset of 12-72 hours (machine-specific) the
  failure mode's signature grows (bearing wear: vibration and heat; seal leak: pressure and flow
  drop; overheating: temperature), accelerating towards the failure;
* a failure stops the machine until it is repaired (a corrective maintenance record); planned
  preventive maintenance also stops it (1-3 h) and, when it falls inside a degradation, averts
  that failure, as a good inspection does. Periodic maintenance renews the machine either way
  (its wear-out clock restarts). A job a planner orders instead (`planned_maintenance`, acting
  on alerts) that falls before the degradation is an inspection that finds nothing: 0.5-1 h,
  and the machine keeps its wear, so the failure still comes;
* sensors add noise, slow calibration drift, spikes, dropouts (missing readings), stuck
  stretches (a frozen value) and rare fault codes (-999, outside the valid range);
* a configurable share of JSON payloads is malformed (missing fields, wrong types, NaN, unknown
  metrics, wrong units, seconds instead of milliseconds, garbage bytes).

Time is generated in fixed one-hour chunks, each from its own seeded random stream, so the output
depends only on the configuration and the seed, and memory stays bounded for any duration.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iiot.catalog import MetricCatalog
from iiot.contract import Reading, ReadingColumns, SeriesKey

HOUR_MS = 3_600_000
CHUNK_MS = HOUR_MS
DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
SIMULATED_METRICS = ("temperature", "vibration", "pressure", "rpm", "flow_rate")
FAILURE_MODES = ("bearing_wear", "seal_leak", "overheating")
# A planner's job that finds no developing fault is an inspection (hours, uniform): shorter than
# a job that replaces the worn part (1-3 h), and it leaves the machine's wear as it was.
INSPECTION_HOURS = (0.5, 1.0)
SENSOR_FAULT_CODE = -999.0

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MachineModel:
    name: str
    rated_rpm: float
    flow: float  # L/min at rated speed
    pressure: float  # bar at rated speed
    temperature_rise: float  # degC above ambient at full load
    vibration: float  # mm/s at full load


MACHINE_MODELS = (
    MachineModel("CP-200", 1480.0, 600.0, 120.0, 38.0, 3.0),
    MachineModel("CP-400", 1780.0, 900.0, 160.0, 42.0, 4.0),
    MachineModel("SP-100", 1200.0, 350.0, 90.0, 32.0, 2.5),
)


@dataclass(frozen=True)
class FleetConfig:
    """What to simulate. `mtbf_hours` is the mean operating time between failures."""

    factories: int = 2
    machines_per_factory: int = 10
    start: datetime = DEFAULT_START
    hours: float = 24.0
    interval_ms: int = 10_000
    seed: int = 0
    malformed_rate: float = 0.001
    mtbf_hours: float = 120.0
    preventive_interval_hours: float = 240.0
    # Maintenance a planner orders instead of the periodic plan, as (machine_id, start_ms) jobs
    # (the downtime what-if acts on the predictor's alerts with it). None keeps the periodic
    # plan; a tuple, even empty, replaces it, and each machine then draws its history from its
    # own random stream, so that one machine's jobs leave every other machine's history alone.
    planned_maintenance: tuple[tuple[str, int], ...] | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.factories < 1 or self.machines_per_factory < 1:
            problems.append("factories and machines per factory must be at least 1")
        if not self.hours > 0:
            problems.append(f"hours must be positive, got {self.hours}")
        if not 100 <= self.interval_ms <= CHUNK_MS:
            problems.append(f"interval must be between 100 ms and 1 h, got {self.interval_ms} ms")
        if not 0 <= self.malformed_rate <= 1:
            problems.append(f"malformed rate must be between 0 and 1, got {self.malformed_rate}")
        if not self.mtbf_hours > 0 or not self.preventive_interval_hours > 0:
            problems.append("mtbf and preventive interval must be positive")
        if self.start.tzinfo is None:
            problems.append("start must carry a time zone (use UTC)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.hours * HOUR_MS)

    @property
    def machines(self) -> int:
        return self.factories * self.machines_per_factory

    @property
    def expected_readings(self) -> int:
        steps = math.ceil((self.end_ms - self.start_ms) / self.interval_ms)
        return steps * self.machines * len(SIMULATED_METRICS)


@dataclass(frozen=True)
class Machine:
    factory_id: str
    machine_id: str
    model: str
    installed_on: str
    vibration_sensitivity: float
    thermal_sensitivity: float
    load_factor: float


@dataclass(frozen=True)
class Failure:
    failure_id: str
    factory_id: str
    machine_id: str
    failure_mode: str
    degradation_start_ms: int
    failed_at_ms: int
    repaired_at_ms: int


@dataclass(frozen=True)
class Maintenance:
    maintenance_id: str
    factory_id: str
    machine_id: str
    kind: str  # "preventive" | "corrective"
    started_at_ms: int
    completed_at_ms: int
    failure_id: str  # the failure a corrective job repaired, "" for preventive
    averted_failure: bool  # a preventive job that found and fixed a developing fault


@dataclass
class _Timeline:
    """Per machine: degradation episodes and stops, in milliseconds.

    A degradation is (start, cut, failure, mode, shape): it grows as ((t - start) / (failure -
    start)) ** shape and stops at `cut`, the failure itself or the maintenance that averted it.
    """

    degradations: list[tuple[int, int, int, int, float]] = field(default_factory=list)
    stops: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _SensorFaults:
    dropouts: list[tuple[int, int, int]]  # (series, start_ms, end_ms)
    stuck: list[tuple[int, int, int]]


class FleetSimulator:
    """Generates the fleet's readings chunk by chunk, plus its failure and maintenance history."""

    def __init__(self, config: FleetConfig, catalog: MetricCatalog) -> None:
        self.config = config
        self.catalog = catalog
        self.metrics = tuple(m for m in SIMULATED_METRICS if m in catalog)
        if not self.metrics:
            raise ValueError(f"the catalog {catalog.source} defines none of {SIMULATED_METRICS}")
        seeds = np.random.SeedSequence(config.seed)
        self._chunk_seed = int(seeds.generate_state(1)[0])
        fleet_rng = np.random.default_rng(seeds.spawn(1)[0])
        self.machines = self._make_machines(fleet_rng)
        self._params = self._machine_parameters(fleet_rng)
        self.failures, self.maintenance, self._timelines = self._schedule(fleet_rng)
        self.series = [
            SeriesKey(
                m.factory_id, m.machine_id, f"{m.machine_id}-{metric}", metric, catalog[metric].unit
            )
            for m in self.machines
            for metric in self.metrics
        ]
        self._faults = self._sensor_faults(fleet_rng)

    # ------------------------------------------------------------------ fleet and history

    def _make_machines(self, rng: np.random.Generator) -> list[Machine]:
        machines = []
        for f in range(self.config.factories):
            factory_id = f"F{f + 1:02d}"
            for m in range(self.config.machines_per_factory):
                model = MACHINE_MODELS[int(rng.integers(len(MACHINE_MODELS)))]
                age_days = int(rng.integers(90, 3650))
                installed = datetime.fromtimestamp(
                    (self.config.start_ms - age_days * 24 * HOUR_MS) / 1000, tz=UTC
                )
                machines.append(
                    Machine(
                        factory_id=factory_id,
                        machine_id=f"{factory_id}-M{m + 1:03d}",
                        model=model.name,
                        installed_on=installed.date().isoformat(),
                        vibration_sensitivity=round(float(rng.uniform(2.5, 7.0)), 3),
                        thermal_sensitivity=round(float(rng.uniform(15.0, 40.0)), 3),
                        load_factor=round(float(rng.uniform(0.8, 1.05)), 3),
                    )
                )
        return machines

    def _machine_parameters(self, rng: np.random.Generator) -> dict[str, FloatArray]:
        models = {model.name: model for model in MACHINE_MODELS}
        spec = [models[m.model] for m in self.machines]
        n = len(self.machines)
        return {
            "rated_rpm": np.array([s.rated_rpm for s in spec]),
            "flow": np.array([s.flow for s in spec]) * rng.uniform(0.95, 1.05, n),
            "pressure": np.array([s.pressure for s in spec]) * rng.uniform(0.95, 1.05, n),
            "temperature_rise": np.array([s.temperature_rise for s in spec])
            * rng.uniform(0.9, 1.1, n),
            "vibration": np.array([s.vibration for s in spec]) * rng.uniform(0.85, 1.15, n),
            "vibration_sensitivity": np.array([m.vibration_sensitivity for m in self.machines]),
            "thermal_sensitivity": np.array([m.thermal_sensitivity for m in self.machines]),
            "load_factor": np.array([m.load_factor for m in self.machines]),
            "load_phase": rng.uniform(0, 2 * np.pi, n),
            "load_period_h": rng.uniform(2.0, 7.0, n),
            "ambient_offset": rng.normal(0.0, 1.5, n),
        }

    def _schedule(
        self, rng: np.random.Generator
    ) -> tuple[list[Failure], list[Maintenance], list[_Timeline]]:
        """Draw each machine's failures and maintenance over the simulated span."""
        cfg = self.config
        failures: list[Failure] = []
        maintenance: list[Maintenance] = []
        timelines = []
        fleet_rng = rng
        for index, machine in enumerate(self.machines):
            timeline = _Timeline()
            planned = self._planned_starts(machine.machine_id)
            rng = fleet_rng if planned is None else np.random.default_rng([cfg.seed, 1, index])
            # Failures arrive after Weibull-distributed operating times (wear-out: shape 1.5);
            # the first clock starts at a random point of the machine's life before the run.
            scale_h = cfg.mtbf_hours / math.gamma(1 + 1 / 1.5)
            clock = cfg.start_ms - int(rng.uniform(0, cfg.mtbf_hours) * HOUR_MS)
            next_pm = cfg.start_ms + int(rng.uniform(0, cfg.preventive_interval_hours) * HOUR_MS)
            if planned is not None:
                next_pm = _next_start(planned, clock)
            while clock < cfg.end_ms:
                failure_at = clock + int(scale_h * rng.weibull(1.5) * HOUR_MS)
                onset = int(rng.uniform(12, 72) * HOUR_MS)
                mode = FAILURE_MODES[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
                shape = float(rng.uniform(1.5, 3.0))
                degradation_start = max(clock, failure_at - onset)
                # A planner's job (`planned_maintenance`) starts with an inspection: before the
                # degradation it finds nothing, the machine returns to service after it and
                # keeps its wear (the failure still comes, nothing was replaced).
                while planned is not None and next_pm < degradation_start:
                    inspection = int(
                        rng.uniform(INSPECTION_HOURS[0], INSPECTION_HOURS[1]) * HOUR_MS
                    )
                    if next_pm < cfg.end_ms:
                        maintenance.append(
                            Maintenance(
                                f"PM-{machine.machine_id}-{len(maintenance)}",
                                machine.factory_id,
                                machine.machine_id,
                                "preventive",
                                next_pm,
                                next_pm + inspection,
                                "",
                                False,
                            )
                        )
                    timeline.stops.append((next_pm, next_pm + inspection))
                    next_pm = _next_start(planned, next_pm + inspection)
                # Preventive maintenance due before the failure resets the clock: a job that
                # falls inside the degradation finds the fault and averts the failure.
                if next_pm < failure_at:
                    duration = int(rng.uniform(1, 3) * HOUR_MS)
                    averted = next_pm >= degradation_start
                    if averted and next_pm > degradation_start:
                        timeline.degradations.append(
                            (
                                degradation_start,
                                next_pm,
                                failure_at,
                                FAILURE_MODES.index(mode),
                                shape,
                            )
                        )
                    if next_pm < cfg.end_ms:
                        maintenance.append(
                            Maintenance(
                                f"PM-{machine.machine_id}-{len(maintenance)}",
                                machine.factory_id,
                                machine.machine_id,
                                "preventive",
                                next_pm,
                                next_pm + duration,
                                "",
                                averted,
                            )
                        )
                    timeline.stops.append((next_pm, next_pm + duration))
                    clock = next_pm + duration
                    next_pm = clock + int(cfg.preventive_interval_hours * HOUR_MS)
                    if planned is not None:
                        next_pm = _next_start(planned, clock)
                    continue
                repair = int(rng.uniform(2, 8) * HOUR_MS)
                timeline.degradations.append(
                    (degradation_start, failure_at, failure_at, FAILURE_MODES.index(mode), shape)
                )
                timeline.stops.append((failure_at, failure_at + repair))
                if failure_at < cfg.end_ms and failure_at + repair > cfg.start_ms:
                    failure_id = f"FL-{machine.machine_id}-{len(failures)}"
                    failures.append(
                        Failure(
                            failure_id,
                            machine.factory_id,
                            machine.machine_id,
                            mode,
                            degradation_start,
                            failure_at,
                            failure_at + repair,
                        )
                    )
                    maintenance.append(
                        Maintenance(
                            f"CM-{machine.machine_id}-{len(maintenance)}",
                            machine.factory_id,
                            machine.machine_id,
                            "corrective",
                            failure_at,
                            failure_at + repair,
                            failure_id,
                            False,
                        )
                    )
                clock = failure_at + repair
                next_pm = max(next_pm, clock + int(cfg.preventive_interval_hours * HOUR_MS / 2))
                if planned is not None:
                    next_pm = _next_start(planned, clock)
            timelines.append(timeline)
        maintenance.sort(key=lambda job: (job.started_at_ms, job.machine_id))
        failures.sort(key=lambda failure: (failure.failed_at_ms, failure.machine_id))
        return failures, maintenance, timelines

    def _planned_starts(self, machine_id: str) -> list[int] | None:
        """The planned jobs' start times of one machine, sorted; None: the periodic plan."""
        planned = self.config.planned_maintenance
        if planned is None:
            return None
        return sorted(start for machine, start in planned if machine == machine_id)

    def _sensor_faults(self, rng: np.random.Generator) -> _SensorFaults:
        cfg = self.config
        span_h = cfg.hours
        dropouts, stuck = [], []
        for series in range(len(self.series)):
            for _ in range(rng.poisson(span_h / 48)):
                begin = cfg.start_ms + int(rng.uniform(0, span_h) * HOUR_MS)
                dropouts.append((series, begin, begin + int(rng.uniform(1, 30) * 60_000)))
            for _ in range(rng.poisson(span_h / 96)):
                begin = cfg.start_ms + int(rng.uniform(0, span_h) * HOUR_MS)
                stuck.append((series, begin, begin + int(rng.uniform(10, 120) * 60_000)))
        return _SensorFaults(dropouts, stuck)

    # ------------------------------------------------------------------------- readings

    def chunks(self, first: int = 0, stop: int | None = None) -> Iterator[ReadingColumns]:
        """The readings, one simulated hour at a time, in time order within each chunk; from
        chunk `first` up to (not including) `stop`. A chunk is the same whichever range asks
        for it, so a run split in parts (a history, then the live hours) is one run."""
        cfg = self.config
        stop = self.chunk_count if stop is None else min(stop, self.chunk_count)
        for index in range(max(first, 0), stop):
            chunk_start = cfg.start_ms + index * CHUNK_MS
            chunk_end = min(chunk_start + CHUNK_MS, cfg.end_ms)
            yield self._chunk(index, chunk_start, chunk_end)

    def prelude(self, hours: float) -> Iterator[ReadingColumns]:
        """The readings of the whole hours (at least `hours`) before the simulated span, one
        hour at a time, in time order: what a gateway had read before the span starts. By the
        same schedule: a degradation or a stop that began before the start shows, a machine
        runs healthy before its first drawn life, and sensors have no dropouts or stuck spells
        there. Each prelude hour has its own random stream, apart from the span's."""
        cfg = self.config
        for index in range(-math.ceil(hours * HOUR_MS / CHUNK_MS), 0):
            chunk_start = cfg.start_ms + index * CHUNK_MS
            yield self._chunk(index, chunk_start, chunk_start + CHUNK_MS)

    def repaired_before_start(self) -> dict[str, list[int]]:
        """Per machine, the end of each stop before the simulated span, in time order: the
        repairs of the failures before it, which `failures` and `maintenance` leave out (no
        job is planned before the span), and which a gateway would have been told of."""
        start = self.config.start_ms
        return {
            machine.machine_id: sorted(end for _, end in timeline.stops if end <= start)
            for machine, timeline in zip(self.machines, self._timelines, strict=True)
        }

    @property
    def chunk_count(self) -> int:
        return math.ceil((self.config.end_ms - self.config.start_ms) / CHUNK_MS)

    def _chunk_rng(self, index: int) -> np.random.Generator:
        """Hour `index`'s random stream. A prelude hour (`prelude`, index < 0) draws from a
        stream apart from every span hour's: SeedSequence pads the two-word seed [seed, index]
        with zero words, and the prelude's third word, -index, is at least 1."""
        return np.random.default_rng(
            [self._chunk_seed, index] if index >= 0 else [self._chunk_seed, 1, -index]
        )

    def _chunk(self, index: int, chunk_start: int, chunk_end: int) -> ReadingColumns:
        cfg = self.config
        rng = self._chunk_rng(index)
        first_step = math.ceil((chunk_start - cfg.start_ms) / cfg.interval_ms)
        t = cfg.start_ms + cfg.interval_ms * np.arange(
            first_step, math.ceil((chunk_end - cfg.start_ms) / cfg.interval_ms), dtype=np.int64
        )
        p = self._params
        n_machines, n_t = len(self.machines), len(t)
        hour = (t % (24 * HOUR_MS)) / HOUR_MS
        weekday = ((t // (24 * HOUR_MS)) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        shift_load = np.where(
            (hour >= 6) & (hour < 14), 0.9, np.where((hour >= 14) & (hour < 22), 0.8, 0.55)
        )
        shift_load = shift_load * np.where(weekday >= 5, 0.65, 1.0)
        hours_abs = t / HOUR_MS
        load = shift_load[None, :] * p["load_factor"][:, None] + 0.05 * np.sin(
            2 * np.pi * hours_abs[None, :] / p["load_period_h"][:, None] + p["load_phase"][:, None]
        )
        load = np.clip(load, 0.2, 1.0)
        ambient = (
            22 + 4 * np.sin(2 * np.pi * (hour - 9) / 24)[None, :] + p["ambient_offset"][:, None]
        )

        degradation = np.zeros((len(FAILURE_MODES), n_machines, n_t))
        running = np.ones((n_machines, n_t))
        for m, timeline in enumerate(self._timelines):
            for begin, cut, end, mode, shape in timeline.degradations:
                if cut <= chunk_start or begin >= chunk_end:
                    continue
                lo, hi = np.searchsorted(t, [begin, cut])
                progress = (t[lo:hi] - begin) / max(end - begin, 1)
                degradation[mode, m, lo:hi] = progress**shape
            for begin, end in timeline.stops:
                if end <= chunk_start or begin >= chunk_end:
                    continue
                lo, hi = np.searchsorted(t, [begin, end])
                running[m, lo:hi] = 0.0
        bearing, seal, heat = degradation

        speed = running * (0.6 + 0.4 * load)
        rpm = p["rated_rpm"][:, None] * speed
        flow = p["flow"][:, None] * speed * (1 - 0.35 * seal)
        pressure = p["pressure"][:, None] * speed**2 * (1 - 0.3 * seal) + 1.0
        temperature = ambient + running * (
            p["temperature_rise"][:, None] * load
            + p["thermal_sensitivity"][:, None] * (0.5 * bearing + heat)
        )
        vibration = 0.15 + running * p["vibration"][:, None] * (0.7 + 0.3 * load) * (
            1 + p["vibration_sensitivity"][:, None] * (bearing**2 + 0.3 * seal**2)
        )
        signals = {
            "temperature": (temperature, 0.3),
            "vibration": (vibration, 0.15),
            "pressure": (pressure, 1.0),
            "rpm": (rpm, 4.0),
            "flow_rate": (flow, 4.0),
        }
        n_metrics = len(self.metrics)
        per_machine = np.empty((n_t, n_machines, n_metrics))
        noise = rng.standard_normal((n_t, n_machines, n_metrics))
        sigmas = np.array([signals[metric][1] for metric in self.metrics])
        for k, metric in enumerate(self.metrics):
            per_machine[:, :, k] = signals[metric][0].T + sigmas[k] * noise[:, :, k]
        values = per_machine.reshape(n_t, n_machines * n_metrics)

        # Calibration drift: a tenth of the sensors drift linearly, about a noise sigma in 10 h.
        drift_rng = np.random.default_rng([self._chunk_seed, 2**31 - 1])
        drifting = drift_rng.random(values.shape[1]) < 0.1
        drift = np.where(drifting, drift_rng.normal(0, 0.1, values.shape[1]), 0.0)
        drift_per_hour = drift * np.tile(sigmas, n_machines)
        values += ((t - cfg.start_ms) / HOUR_MS)[:, None] * drift_per_hour[None, :]

        spikes = rng.random(values.shape) < 2e-4
        if spikes.any():
            values[spikes] *= rng.uniform(1.5, 3.0, int(spikes.sum()))
        fault_codes = rng.random(values.shape) < 2e-5
        values[fault_codes] = SENSOR_FAULT_CODE

        present = np.ones(values.shape, dtype=bool)
        for series, begin, end in self._faults.stuck:
            if end > chunk_start and begin < chunk_end:
                lo, hi = np.searchsorted(t, [begin, end])
                values[lo:hi, series] = values[max(lo - 1, 0), series]
        for series, begin, end in self._faults.dropouts:
            if end > chunk_start and begin < chunk_end:
                lo, hi = np.searchsorted(t, [begin, end])
                present[lo:hi, series] = False

        values = np.maximum(values, np.where(values == SENSOR_FAULT_CODE, -np.inf, 0.0))
        for k, metric in enumerate(self.metrics):
            decimals = self.catalog[metric].decimals
            values[:, k::n_metrics] = np.round(values[:, k::n_metrics], decimals)

        n_series = values.shape[1]
        series_index = np.tile(np.arange(n_series, dtype=np.int32), n_t)
        timestamp = np.repeat(t, n_series)
        mask = present.reshape(-1)
        return ReadingColumns(
            self.series, series_index[mask], timestamp[mask], values.reshape(-1)[mask]
        )


# ----------------------------------------------------------------------- malformed payloads

MALFORMED_KINDS = (
    "missing_field",
    "wrong_type",
    "nan_value",
    "unknown_metric",
    "unit_mismatch",
    "seconds_timestamp",
    "garbage",
)


_NO_LINE_BREAKS = bytes.maketrans(b"\r\n", b"  ")  # one payload per JSON line


def malform(reading: Reading, kind: str, rng: np.random.Generator) -> bytes:
    """One reading's JSON, broken in the way `kind` names."""
    record: dict[str, Any] = {
        "timestamp": reading.timestamp,
        "factory_id": reading.factory_id,
        "machine_id": reading.machine_id,
        "sensor_id": reading.sensor_id,
        "metric": reading.metric,
        "value": reading.value,
        "unit": reading.unit,
    }
    if kind == "missing_field":
        del record[("unit", "value", "sensor_id", "timestamp")[int(rng.integers(4))]]
    elif kind == "wrong_type":
        record["value"] = f"{reading.value}"
    elif kind == "nan_value":
        record["value"] = float("nan")
    elif kind == "unknown_metric":
        record["metric"] = "humidity_x"
    elif kind == "unit_mismatch":
        record["unit"] = "degF" if reading.metric == "temperature" else "furlong/s"
    elif kind == "seconds_timestamp":
        record["timestamp"] = reading.timestamp // 1000
    elif kind == "garbage":
        return bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8)).translate(
            _NO_LINE_BREAKS
        )
    return json.dumps(record, allow_nan=True).encode()


# ----------------------------------------------------------------------------- file output


@dataclass
class SimulationSummary:
    readings: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    maintenance: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def readings_per_second(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def arrow_table(columns: ReadingColumns) -> Any:
    """Readings as a pyarrow Table (dictionary-encoded strings, UTC millisecond timestamps)."""
    import pyarrow as pa

    def dictionary_column(position: int) -> Any:
        per_series = [key[position] for key in columns.series]
        uniques = sorted(set(per_series))
        code = {value: i for i, value in enumerate(uniques)}
        series_codes = np.array([code[value] for value in per_series], dtype=np.int32)
        indices = series_codes[columns.series_index] if len(per_series) else columns.series_index
        return pa.DictionaryArray.from_arrays(pa.array(indices), pa.array(uniques, pa.string()))

    return pa.table(
        {
            "timestamp": pa.array(columns.timestamp, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "factory_id": dictionary_column(0),
            "machine_id": dictionary_column(1),
            "sensor_id": dictionary_column(2),
            "metric": dictionary_column(3),
            "value": pa.array(columns.value, pa.float64()),
            "unit": dictionary_column(4),
        }
    )


def _next_start(starts: list[int], after_ms: int) -> int:
    """The first planned start at or after `after_ms`, or never (a year past the last)."""
    for start in starts:
        if start >= after_ms:
            return start
    return max([after_ms, *starts]) + 365 * 24 * HOUR_MS


def write_simulation(
    simulator: FleetSimulator,
    out_dir: Path,
    *,
    formats: tuple[str, ...] = ("parquet",),
    on_chunk: Callable[[int], None] | None = None,
) -> SimulationSummary:
    """Write readings (Parquet and/or JSON lines), failures, maintenance and machine lists."""
    import time

    import pyarrow.parquet as pq

    unknown = set(formats) - {"parquet", "jsonl"}
    if unknown:
        raise ValueError(f"unknown output format(s) {sorted(unknown)}: use parquet and/or jsonl")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = SimulationSummary(malformed=dict.fromkeys(MALFORMED_KINDS, 0))
    cfg = simulator.config
    began = time.perf_counter()
    writer = None
    jsonl = (out_dir / "readings.jsonl").open("wb") if "jsonl" in formats else None
    malformed_rng = np.random.default_rng([cfg.seed, 7])
    try:
        for columns in simulator.chunks():
            if "parquet" in formats:
                table = arrow_table(columns)
                if writer is None:
                    writer = pq.ParquetWriter(
                        out_dir / "readings.parquet", table.schema, compression="zstd"
                    )
                writer.write_table(table)
            if jsonl is not None:
                _write_jsonl(jsonl, columns, cfg.malformed_rate, malformed_rng, summary)
            summary.readings += len(columns)
            if on_chunk:
                on_chunk(len(columns))
    finally:
        if writer is not None:
            writer.close()
        if jsonl is not None:
            jsonl.close()
    summary.seconds = time.perf_counter() - began
    _write_records(out_dir / "failures.csv", [asdict(f) for f in simulator.failures], Failure)
    _write_records(
        out_dir / "maintenance_records.csv", [asdict(m) for m in simulator.maintenance], Maintenance
    )
    _write_records(out_dir / "machines.csv", [asdict(m) for m in simulator.machines], Machine)
    summary.failures = len(simulator.failures)
    summary.maintenance = len(simulator.maintenance)
    manifest = {
        "config": {**asdict(cfg), "start": cfg.start.isoformat()},
        "catalog_digest": simulator.catalog.digest,
        "readings": summary.readings,
        "malformed_json_lines": summary.malformed if jsonl is not None else {},
        "failures": summary.failures,
        "maintenance": summary.maintenance,
        "start_ms": cfg.start_ms,
        "end_ms": cfg.end_ms,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    summary.files = sorted(p.name for p in out_dir.iterdir())
    return summary


def _write_jsonl(
    sink: Any,
    columns: ReadingColumns,
    malformed_rate: float,
    rng: np.random.Generator,
    summary: SimulationSummary,
) -> None:
    """One reading per line in the case study's JSON; some lines malformed on purpose."""
    import msgspec

    readings = columns.to_readings()
    broken = np.flatnonzero(rng.random(len(readings)) < malformed_rate).tolist()
    lines = [msgspec.json.encode(r) for r in readings]
    for position in broken:
        kind = MALFORMED_KINDS[int(rng.integers(len(MALFORMED_KINDS)))]
        lines[position] = malform(readings[position], kind, rng)
        summary.malformed[kind] += 1
    sink.write(b"\n".join(lines) + b"\n")


def _write_records(path: Path, rows: list[dict[str, Any]], kind: type[Any]) -> None:
    fieldnames = [f.name for f in fields(kind)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
