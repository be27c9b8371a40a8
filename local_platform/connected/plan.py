"""What a connected run does: the fleet, accelerated time, the faults, where files go.

The plan is written to `<run dir>/plan.json` before anything starts; every process of the run
reads it (`--plan`), so they agree on the fleet, the simulated clock and the topology.

The fleet is simulated over one span: `history_hours` before the live start (the lake's past,
landed before the run) and `hours` of live readings that the sensors publish. One simulator
over both keeps every machine's degradations, failures and maintenance continuous.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from local_platform.simulator import HOUR_MS, SIMULATED_METRICS, FleetConfig

DEFAULT_LIVE_START = datetime(2026, 1, 8, tzinfo=UTC)  # a Thursday; the history runs before it

# The cloud resources' names, as the stacks name them for an environment called "local".
PREFIX = "iiot-local"
TELEMETRY_STREAM = f"{PREFIX}-telemetry"
ANOMALY_STREAM = f"{PREFIX}-anomalies"
DELIVERY_STREAM = f"{PREFIX}-telemetry-to-bronze"


@dataclass(frozen=True)
class Faults:
    """Faults injected into the run, in simulated hours from the live start (wall seconds for
    how long a crashed gateway stays down). `enabled=False` runs the platform undisturbed."""

    enabled: bool = True
    outage_factory: str = "F01"  # this factory's uplink to the cloud broker goes down
    outage_start_h: float = 0.30  # as a share of the live hours
    outage_hours: float = 0.20  # share of the live hours
    kill_factory: str = "F02"  # this gateway is SIGKILLed, then restarted
    kill_at_h: float = 0.55  # share of the live hours
    kill_down_s: float = 2.0  # wall seconds before the restart
    influx_stop_at_h: float = 0.65  # share of the live hours
    influx_down_s: float = 4.0  # wall seconds influxd is stopped

    def resolved(self, factories: int) -> Faults:
        """The fault factories clamped to the fleet (a one-factory fleet faults F01 twice)."""
        names = [f"F{i + 1:02d}" for i in range(factories)]
        outage = self.outage_factory if self.outage_factory in names else names[0]
        kill = self.kill_factory if self.kill_factory in names else names[-1]
        return replace(self, outage_factory=outage, kill_factory=kill)


@dataclass(frozen=True)
class Plan:
    work_dir: Path
    factories: int = 2
    machines_per_factory: int = 10
    hours: float = 24.0
    interval_ms: int = 10_000
    seed: int = 1
    malformed_rate: float = 0.002
    mtbf_hours: float = 48.0
    history_hours: int = 72
    readings_per_s: float = 20_000.0
    live_start: datetime = DEFAULT_LIVE_START
    faults: Faults = field(default_factory=Faults)
    lake_every_s: float = 12.0  # wall seconds between incremental lake runs
    # The model lifecycle: two FailureModel versions from the lake before the sensors start,
    # the first trained on the history up to `model_lag_hours` before the live start (the
    # gateways start with it), the second on all of it; the second is deployed to the running
    # gateways `model_swap_at` (a share) into the live hours, and their predictors swap it in.
    # Off: the gateways run the SensorBuffer alone.
    model_lifecycle: bool = True
    model_lag_hours: int = 24
    model_swap_at: float = 0.4
    firehose_buffer_s: float = 2.0  # the delivery stream's buffering interval (wall)
    # An alert is late when it reaches the anomaly stream more than this many wall seconds of
    # simulated time after its readings were published (accelerated time turns each second of
    # the pipeline's normal delay into `speed` simulated seconds).
    late_after_wall_s: float = 6.0

    def __post_init__(self) -> None:
        problems = []
        if self.history_hours < 0 or self.history_hours != int(self.history_hours):
            problems.append("history hours must be a whole number >= 0")
        if self.live_start.tzinfo is None:
            problems.append("live start needs a time zone")
        elif self.live_start.timestamp() * 1000 % HOUR_MS:
            problems.append("live start must be on the hour")
        if not self.readings_per_s > 0:
            problems.append("readings/s must be positive")
        if problems:
            raise ValueError("; ".join(problems))
        self.fleet  # noqa: B018 - FleetConfig validates the rest

    @property
    def fleet(self) -> FleetConfig:
        """The whole simulated span: history, then the live hours."""
        return FleetConfig(
            factories=self.factories,
            machines_per_factory=self.machines_per_factory,
            start=self.live_start - timedelta(hours=self.history_hours),
            hours=self.history_hours + self.hours,
            interval_ms=self.interval_ms,
            seed=self.seed,
            malformed_rate=self.malformed_rate,
            mtbf_hours=self.mtbf_hours,
        )

    @property
    def factory_ids(self) -> list[str]:
        return [f"F{i + 1:02d}" for i in range(self.factories)]

    @property
    def live_start_ms(self) -> int:
        return int(self.live_start.timestamp() * 1000)

    @property
    def live_end_ms(self) -> int:
        return self.live_start_ms + int(self.hours * HOUR_MS)

    @property
    def first_live_chunk(self) -> int:
        return self.history_hours

    @property
    def sensors(self) -> int:
        return self.factories * self.machines_per_factory * len(SIMULATED_METRICS)

    @property
    def speed(self) -> float:
        """Simulated seconds per wall second that give `readings_per_s` readings per second."""
        per_sim_second = self.sensors / (self.interval_ms / 1000)
        return self.readings_per_s / per_sim_second

    @property
    def live_wall_s(self) -> float:
        return self.hours * 3600 / self.speed

    @property
    def late_after_s(self) -> int:
        """Simulated seconds after which an alert counts as late."""
        return max(5, math.ceil(self.late_after_wall_s * self.speed))

    def at(self, share: float) -> int:
        """The simulated time (UTC ms) `share` of the way through the live hours."""
        return self.live_start_ms + int(share * self.hours * HOUR_MS)

    # -------------------------------------------------------------------------- paths

    @property
    def run_dir(self) -> Path:
        return self.work_dir

    @property
    def lake_dir(self) -> Path:
        return self.work_dir / "lake"

    @property
    def landing_dir(self) -> Path:
        return self.lake_dir / "landing"

    def gateway_dir(self, factory: str) -> Path:
        return self.work_dir / "gateways" / factory

    @property
    def cloud_dir(self) -> Path:
        return self.work_dir / "cloud"

    @property
    def stream_dir(self) -> Path:
        return self.work_dir / "stream"

    @property
    def status_dir(self) -> Path:
        return self.work_dir / "status"

    # ---------------------------------------------------------------------- (de)serialise

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["work_dir"] = str(self.work_dir)
        document["live_start"] = self.live_start.isoformat()
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Plan:
        values = dict(document)
        values["work_dir"] = Path(values["work_dir"])
        values["live_start"] = datetime.fromisoformat(values["live_start"])
        values["faults"] = Faults(**values.get("faults", {}))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def write(self) -> Path:
        path = self.work_dir / "plan.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls.from_json(json.loads(path.read_text()))


@dataclass(frozen=True)
class Topology:
    """Where each server of the run listens (127.0.0.1 ports), written to `topology.json`."""

    cloud_broker: int
    input_brokers: dict[str, int]
    uplinks: dict[str, int]  # the factory's route to the cloud broker (the fault's switch)
    moto: int = 0
    influx: str = ""  # the v2 write API the writer Lambda calls (relay to influxd)
    influx_query: str = ""  # influxd's own HTTP API (queries)

    def write(self, run_dir: Path) -> None:
        (run_dir / "topology.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> Topology:
        return cls(**json.loads((run_dir / "topology.json").read_text()))


def write_json(path: Path, document: Any) -> None:
    """Write JSON atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=2, default=str) + "\n")
    partial.replace(path)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default
