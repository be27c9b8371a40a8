"""Downtime what-if: the same fleet run twice, seeded identically, run-to-failure against
acting on the failure predictor's alerts with preventive maintenance.

Both arms switch the simulator's periodic maintenance off (`FleetConfig.planned_maintenance`),
so each machine draws its wear, failures and repairs from its own random stream: the arms see
the same machines developing the same faults until a planned job changes one machine's history.

History before the window. The figures count a watch window (by default the 7 days after the
run, `fleet_after_run`); the fleet can be simulated from `history_days` before it
(`with_history`; `HISTORY_DAYS`, none by default: it moves the window's failures, see there),
as a deployed platform's gateways have been running for days; the prelude (below) gives the
predictor that reading without moving them. Both arms
run to failure through the history, identically (no planned job starts before the window: the
planner starts watching at its start); the predictor reads the whole history, and a repair
that straddles the window's start counts only its part inside the window. The simulator draws
each machine's failures from the fleet's start (the first at a random point of its wear-out
clock), so an earlier start moves every failure: the window with a history holds other
failures than the same window without one (`history_days` 0: the fleet starts at the window).

The predictive arm is closed-loop. The FailurePredictor component's own logic, with the run's
compiled model, reads each machine's readings as the gateway would (its whole history: the
gateway keeps its feature state through the jobs), with `whole_history` from `prelude_hours`
before the simulated fleet's start (`FleetSimulator.prelude`: the same schedule, so the same
failures), and told of the repairs before it (`repaired_before_start`): a deployed gateway has
read its machines for days, and a predictor started at the window takes a fault already under
way for the machine's normal. Its first FAILURE_PREDICTED alert in the window (once its risk
has held for the on-delay, `on_delay_minutes`, if one is set) becomes a planned job at the
next shift change (06:00, 14:00, 22:00) at least `lead` later, or after the lead alone when
the alert is urgent (p >= `urgent_probability`) or the risk reaches that before the shift
change (the job is pulled forward); the simulator runs again with that job, which averts the
failure when it falls inside the degradation (as a good inspection does); the predictor then
reads on from the job, and so on until no new alert asks for a job. A machine gets at most
one job per `min_gap`. Nothing the predictor does not see (the
simulator's failure times) reaches the planner.

Accounting (the simulator's rules, the same for both arms; the run-to-failure arm just has no
jobs), inside the window [start, end) only:

* downtime is the time a machine is stopped inside the window: a failure stops it for its
  repair (2-8 h, unplanned), a job for its duration (planned). Every stop counts the same,
  whatever the shift: the pumps run around the clock (the night shift at 55% load). A failure
  counts when it comes inside the window;
* a job that finds the developing fault replaces the worn part: 1-3 h, and the machine starts
  a new life (the failure is averted, the next one draws its own time);
* a job that falls before any degradation finds nothing: an inspection of 0.5-1 h, after which
  the machine runs on with its wear, so its failure still comes and must be caught again. The
  gateway is told only of jobs that did maintenance (a repair or a replaced part), not of
  inspections, so "hours since maintenance" keeps counting through them.

The ceiling (`perfect_plan`, `ceiling_reduction` in the figures): a planner that knew every
failure time, one job an hour before each failure in the window (at its start when that is
later), closed loop (the job changes
the machine's later failures, which get their own jobs, until no new failure appears), under
the same accounting. It runs only the simulator's schedule, not the readings or the predictor,
so it costs little. It is the bound of any predictor here in practice, not a theorem: a job's
duration is drawn from the machine's random stream, so another plan draws other durations.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iiot.catalog import MetricCatalog, load_catalog
from local_platform.simulator import FleetConfig, FleetSimulator, Maintenance

HOUR_MS = 3_600_000
SHIFT_CHANGES = (6, 14, 22)
# Days the fleet runs before the watch window, the same in both arms (a deployed gateway's
# predictor has been reading for days). None by default: it moves every failure (the simulator
# draws them from the fleet's start), so its figures are another fleet's (with spec 2 they did
# not improve), and each closed-loop round reads the whole history again (+60% CPU). The
# prelude (`Policy.prelude_hours`) lets the predictor read before the window on the same fleet.
HISTORY_DAYS = 0.0


@dataclass(frozen=True)
class Policy:
    """How the planner acts on the predictor's alerts. The defaults the sweep takes
    (`min_gap_hours`, `prelude_hours`, `on_delay_minutes`, `alert_threshold`) were measured
    on the validation fleets (`choose_policy`), the last three on both; this folder's
    README.md has those measurements, with the values and changes not kept."""

    lead_hours: float = 0.5  # from an alert to the earliest job start
    # the predictor's CRITICAL level (`failure_predictor.config.SHUTDOWN_FLOOR`: p >=
    # max(0.95, its alert threshold)): an alert at or above it is served at once (after the
    # lead), not at the next shift change, and so is one whose risk reaches it before that
    # change; with the default `alert_threshold` every job is at once
    urgent_probability: float = 0.95
    # at most one job per machine in this time. On seed + 3000 with an earlier model, 1 h gave
    # -29%, 4 h -40%, 12 h -42%, 24 h -39% (on the what-if fleet a day's gap after an
    # inspection that found nothing dropped the alerts of 3 of the 10 failures left); with the
    # 20-day model 12 h gave -46.7%, and at alertThreshold 0.9 12 h and 24 h tied (-35.6%)
    min_gap_hours: float = 12.0
    warmup_hours: float = 2.0  # readings the predictor sees before its first alerts count
    # the predictor keeps its state through the planner's jobs, as a gateway does (it reads the
    # machine's whole history, from `prelude_hours` before the fleet's start); False: it starts
    # afresh `warmup_hours` before each watch window, with no prelude
    whole_history: bool = True
    # with `whole_history`, the predictor has also read the machine's readings of these hours
    # before the simulated span (`FleetSimulator.prelude`: the same schedule, so the same
    # failures), as a deployed gateway has: a degradation that began before the window is then
    # read from its start, not taken for the machine's normal (pooled: none -48.8%, 24 h
    # -50.1%, 48 h -50.5%, 72 h as 48 h)
    prelude_hours: float = 48.0
    # an alarm's on-delay (ISA-18.2): the planner orders a job once the risk has stayed at or
    # above the alert threshold for this long (every prediction, about one a minute), so a
    # risk that crosses it for a moment orders nothing. 0: on the predictor's alert itself
    # (10 min gained on the validation fleets and did not hold on four later ones: it lost on
    # two, gained on one and tied on one)
    on_delay_minutes: float = 0.0
    # the alert threshold the planner's predictors run with (alertThreshold), never below the
    # model's own: a job stops production, so the planner orders one on a CRITICAL alert only.
    # None: the model's own threshold (with spec 3, its cross-validation's 0.9 gave -48.1% /
    # -40.4% against -53.6% / -43.0% at 0.95)
    alert_threshold: float | None = 0.95

    def __post_init__(self) -> None:
        durations = ("lead_hours", "min_gap_hours", "warmup_hours", "prelude_hours")
        problems = [
            f"{name} must be zero or more, got {getattr(self, name)}"
            for name in (*durations, "on_delay_minutes")
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0)
        ]
        for name in ("urgent_probability", "alert_threshold"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                problems.append(f"{name} must be a probability, got {value}")
        if problems:
            raise ValueError("; ".join(problems))


def job_threshold(policy: Policy, model_dir: Path) -> float | None:
    """The alert threshold the planner's predictors run with: the policy's, but never below
    the model's own (the manifest's `threshold`); None: the model's own."""
    from local_platform.report.predictions import model_threshold

    if policy.alert_threshold is None:
        return None
    own = model_threshold(model_dir)
    return policy.alert_threshold if own is None else max(policy.alert_threshold, own)


@dataclass
class MachineReadings:
    timestamp: npt.NDArray[np.int64]
    metric: npt.NDArray[np.str_]
    value: npt.NDArray[np.float64]


def next_shift_change(after_ms: int) -> int:
    """The first shift change (06:00, 14:00, 22:00 UTC) at or after `after_ms`."""
    moment = datetime.fromtimestamp(after_ms / 1000, tz=UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    for offset in range(3):
        for hour in SHIFT_CHANGES:
            candidate = day + timedelta(days=offset, hours=hour)
            if candidate >= moment:
                return int(candidate.timestamp() * 1000)
    raise AssertionError("unreachable: a shift change comes within two days")


def machine_readings(
    simulator: FleetSimulator,
    catalog: MetricCatalog,
    machines: set[str],
    prelude_hours: float = 0.0,
) -> dict[str, MachineReadings]:
    """Each machine's valid readings (the gateway quarantines the rest), in time order, from
    `prelude_hours` before the simulated span (`FleetSimulator.prelude`)."""
    parts: dict[str, list[tuple[Any, Any, Any]]] = {m: [] for m in machines}
    for chunk in itertools.chain(simulator.prelude(prelude_hours), simulator.chunks()):
        owner = np.array([key.machine_id for key in chunk.series])
        metric_of = np.array([key.metric for key in chunk.series])
        low = np.array([catalog[key.metric].valid_range.min for key in chunk.series])
        high = np.array([catalog[key.metric].valid_range.max for key in chunk.series])
        index = chunk.series_index
        valid = (chunk.value >= low[index]) & (chunk.value <= high[index])
        for machine in machines:
            rows = valid & (owner[index] == machine)
            parts[machine].append(
                (chunk.timestamp[rows], metric_of[index[rows]], chunk.value[rows])
            )
    out = {}
    for machine, chunks in parts.items():
        timestamp = np.concatenate([c[0] for c in chunks])
        order = np.argsort(timestamp, kind="stable")
        out[machine] = MachineReadings(
            timestamp[order],
            np.concatenate([c[1] for c in chunks])[order],
            np.concatenate([c[2] for c in chunks])[order],
        )
    return out


@dataclass(frozen=True)
class Alert:
    """A FAILURE_PREDICTED alert the planner acts on."""

    at_ms: int
    probability: float
    # the first prediction at or above the urgent probability from the alert on, when it came
    # before the job the alert alone would get (the next shift change after the lead): a risk
    # that keeps rising pulls the job forward
    urgent_ms: int | None


def first_alert(
    machine_id: str,
    readings: MachineReadings,
    since_ms: int,
    completions: list[int],
    model_dir: Path,
    catalog: MetricCatalog,
    machine_config: dict[str, str],
    read_from_ms: int,
    alert_threshold: float | None = None,
    *,
    urgent_probability: float = 1.0,
    lead_ms: int = 0,
    on_delay_ms: int = 0,
) -> Alert | None:
    """The first FAILURE_PREDICTED alert at or after `since_ms`, from a predictor that reads
    the machine's readings from `read_from_ms` on. An alert the predictor raised before
    `since_ms` and still holds then counts at the first reading from then on: the predictor
    raises an alert once and holds it until the probability falls below the clear threshold,
    so dropping it would leave a machine that is already at risk when the planner starts
    watching without a job. An alert under `urgent_probability` waits for the next shift
    change after `lead_ms`; the predictor reads on until then, and its first prediction at or
    above `urgent_probability` (early enough to start before that shift change) is returned
    as `urgent_ms`. With `on_delay_ms`, the alert counts once the predictor has held it and
    every prediction has been at or above its threshold for that long (an alarm's on-delay),
    at that moment."""
    from failure_predictor.config import PredictorConfig
    from failure_predictor.model_loader import ModelHandle
    from failure_predictor.predictor import FailurePredictor

    from iiot import topics
    from iiot.anomaly import decode_anomaly

    # FAILURE_PREDICTED RAISED / CLEARED: (at, probability, state, threshold)
    events: list[tuple[int, float, str, float]] = []

    def publish(topic: str, payload: bytes) -> None:
        if topic == topics.LOCAL_ALERTS:
            anomaly = decode_anomaly(payload)
            if anomaly.anomaly_type == "FAILURE_PREDICTED":
                # the level the risk must hold for the on-delay (a RAISED alert carries it)
                threshold = anomaly.value if anomaly.threshold is None else anomaly.threshold
                events.append((anomaly.timestamp, anomaly.value, anomaly.state, threshold))

    config = PredictorConfig.from_mapping(
        {
            "factoryId": "F",
            "modelDir": str(model_dir),
            "machines": {machine_id: machine_config},
            # no thresholds: the model's own, as on a gateway with the recipe's configuration
            **({"alertThreshold": alert_threshold} if alert_threshold is not None else {}),
        }
    )
    predictor = FailurePredictor(config, ModelHandle(model_dir), publish, catalog)
    for done in completions:
        predictor.on_maintenance(
            json.dumps({"machine_id": machine_id, "completed_at_ms": done}).encode()
        )
    start = int(np.searchsorted(readings.timestamp, read_from_ms))
    on_reading = predictor.on_reading
    last_probability = predictor.counters.last_probability
    active: tuple[int, float, float] | None = None  # the alert the predictor holds
    streak: int | None = None  # since when every prediction was at or above its threshold
    found: tuple[int, float] | None = None  # the alert the planner acts on
    deadline = 0  # a non-urgent alert's job: urgency counts only if it can start before
    for t, metric, value in zip(
        readings.timestamp[start:].tolist(),
        readings.metric[start:].tolist(),
        readings.value[start:].tolist(),
        strict=True,
    ):
        on_reading(t, machine_id, metric, value)
        if found is not None:
            if t + lead_ms >= deadline:
                return Alert(found[0], found[1], None)
            if last_probability.get(machine_id, 0.0) >= urgent_probability:
                return Alert(found[0], found[1], t)
            continue
        for at, probability, state, threshold in events:
            active = (at, probability, threshold) if state == "RAISED" else None
        events.clear()
        p = last_probability.get(machine_id, 0.0)
        if on_delay_ms:  # since when the alert is held with every prediction at its level
            held = active is not None and p >= active[2]
            streak = (t if streak is None else streak) if held else None
        if active is None or t < since_ms:
            candidate = None
        elif on_delay_ms:  # the moment the risk has held for the on-delay
            candidate = (t, p) if streak is not None and t - streak >= on_delay_ms else None
        else:  # the alert itself, or the watch's start when it was raised before
            candidate = (active[0] if active[0] >= since_ms else t, active[1])
        if candidate is not None:
            found = candidate
            if found[1] >= urgent_probability:
                return Alert(found[0], found[1], found[0])
            deadline = next_shift_change(found[0] + lead_ms)
    return Alert(found[0], found[1], None) if found is not None else None


def with_history(window: FleetConfig, history_days: float) -> FleetConfig:
    """The fleet to simulate for `window`: the same fleet started `history_days` earlier, up to
    the window's end (0: the window itself)."""
    if not math.isfinite(history_days) or history_days < 0:
        raise ValueError(f"history days must be zero or more, got {history_days}")
    if history_days == 0:
        return window
    history = timedelta(days=history_days)
    return replace(
        window,
        start=window.start - history,
        hours=window.hours + history / timedelta(hours=1),
    )


def downtime(simulator: FleetSimulator, window: tuple[int, int] | None = None) -> dict[str, Any]:
    """Downtime inside `window` ([start, end) in ms; default the simulated span), unplanned
    (repairs) and planned (jobs): a stop counts only its part inside, a failure or a job when
    it comes (starts) inside."""
    start_ms, end_ms = window or (simulator.config.start_ms, simulator.config.end_ms)

    def hours(job: Maintenance) -> float:
        begin = max(job.started_at_ms, start_ms)
        end = min(job.completed_at_ms, end_ms)
        return max(end - begin, 0) / HOUR_MS

    corrective = [m for m in simulator.maintenance if m.kind == "corrective"]
    preventive = [
        m
        for m in simulator.maintenance
        if m.kind == "preventive" and start_ms <= m.started_at_ms < end_ms
    ]
    unplanned = sum(hours(m) for m in corrective)
    planned = sum(hours(m) for m in preventive)
    return {
        "failures": sum(start_ms <= f.failed_at_ms < end_ms for f in simulator.failures),
        "unplanned_h": round(unplanned, 2),
        "planned_h": round(planned, 2),
        "downtime_h": round(unplanned + planned, 2),
        "planned_jobs": len(preventive),
        "averted": sum(m.averted_failure for m in preventive),
        "false_alarm_jobs": sum(not m.averted_failure for m in preventive),
    }


def perfect_plan(
    fleet: FleetConfig,
    catalog: MetricCatalog,
    window: tuple[int, int] | None = None,
    lead_hours: float = 1.0,
    max_rounds: int = 1000,
) -> tuple[FleetSimulator, int]:
    """The fleet with a planner that knows every failure time: a job `lead_hours` before each
    failure inside `window` (default the simulated span), or at the window's start when that
    is later (no job before the window), closed loop. Each round gives each machine a job
    before its first failure in the window that has none yet (a job changes the machine's
    later failures), until a round adds no job. A failure at the window's very start, or whose
    job came to nothing (the machine came back from a stop less than the lead before it, so
    the job was an inspection), is left to happen. Returns the simulator with the final plan
    and the rounds it took."""
    start_ms, end_ms = window or (fleet.start_ms, fleet.end_ms)
    lead = int(lead_hours * HOUR_MS)
    plan: set[tuple[str, int]] = set()
    for rounds in range(1, max_rounds + 1):
        simulator = FleetSimulator(replace(fleet, planned_maintenance=tuple(sorted(plan))), catalog)
        added: set[str] = set()
        for failure in simulator.failures:  # in time order
            job = (failure.machine_id, max(failure.failed_at_ms - lead, start_ms))
            if (
                failure.machine_id in added
                or not start_ms <= failure.failed_at_ms < end_ms
                or job[1] >= failure.failed_at_ms
                or job in plan
            ):
                continue
            plan.add(job)
            added.add(failure.machine_id)
        if not added:
            return simulator, rounds
    raise RuntimeError(f"the perfect plan did not settle in {max_rounds} rounds")


def run_whatif(
    fleet: FleetConfig,
    model_dir: Path,
    catalog: MetricCatalog | None = None,
    policy: Policy | None = None,
    *,
    machine_configs: dict[str, dict[str, str]] | None = None,
    history_days: float = HISTORY_DAYS,
) -> dict[str, Any]:
    """Both arms on `fleet`, the watch window, simulated from `history_days` before it (its own
    maintenance plan is replaced); the figures, counted inside the window, as a dict."""
    catalog = catalog or load_catalog()
    policy = policy or Policy()
    began = time.perf_counter()
    window = (fleet.start_ms, fleet.end_ms)
    simulated = with_history(fleet, history_days)
    baseline = FleetSimulator(replace(simulated, planned_maintenance=()), catalog)
    machines = {m.machine_id: m for m in baseline.machines}
    configs = machine_configs or {
        m.machine_id: {"model": m.model, "installedOn": m.installed_on} for m in machines.values()
    }
    warmup = int(policy.warmup_hours * HOUR_MS)
    lead = int(policy.lead_hours * HOUR_MS)
    on_delay = int(policy.on_delay_minutes * 60_000)
    threshold = job_threshold(policy, model_dir)  # the model's manifest, read once
    plan: dict[str, list[int]] = {m: [] for m in machines}
    alerts: list[dict[str, Any]] = []
    # the planner watches from the window's start (no job before it), or once the predictor
    # has read `warmup` when the history is shorter
    prelude = int(policy.prelude_hours * HOUR_MS) if policy.whole_history else 0
    read_from = simulated.start_ms - prelude
    frontier = dict.fromkeys(machines, max(fleet.start_ms, read_from + warmup))
    # a gateway knows its machines' maintenance history: the repairs before the span too
    told = baseline.repaired_before_start() if policy.whole_history else {}
    active = set(machines)
    iterations = 0
    simulator = baseline
    while active:
        iterations += 1
        jobs = tuple((m, start) for m, starts in plan.items() for start in starts)
        simulator = FleetSimulator(replace(simulated, planned_maintenance=jobs), catalog)
        readings = machine_readings(simulator, catalog, active, prelude / HOUR_MS)
        # the repairs before the span (the same whatever the plan: no job is before the
        # window), then the span's
        completions = {m: list(ends) for m, ends in told.items()}
        for job in simulator.maintenance:
            if job.kind == "corrective" or job.averted_failure:  # not an inspection
                completions.setdefault(job.machine_id, []).append(job.completed_at_ms)
        still = set()
        for machine in sorted(active):
            alert = first_alert(
                machine,
                readings[machine],
                frontier[machine],
                completions.get(machine, []),
                model_dir,
                catalog,
                configs.get(machine, {}),
                read_from if policy.whole_history else frontier[machine] - warmup,
                threshold,
                urgent_probability=policy.urgent_probability,
                lead_ms=lead,
                on_delay_ms=on_delay,
            )
            if alert is None:
                continue
            urgent = alert.urgent_ms is not None
            if alert.urgent_ms is not None:
                start = alert.urgent_ms + lead
            else:
                start = next_shift_change(alert.at_ms + lead)
            if start >= fleet.end_ms:
                continue
            plan[machine].append(start)
            alerts.append(
                {
                    "machine_id": machine,
                    "alert_ms": alert.at_ms,
                    "probability": round(alert.probability, 3),
                    "job_ms": start,
                    # at once (after the lead), not at the next shift change: the alert was
                    # urgent, or the risk reached the urgent probability before that change
                    "urgent": urgent,
                    "escalated": urgent and alert.probability < policy.urgent_probability,
                }
            )
            frontier[machine] = start + int(policy.min_gap_hours * HOUR_MS)
            still.add(machine)
        active = still
    final_jobs = tuple((m, start) for m, starts in plan.items() for start in starts)
    predictive = FleetSimulator(replace(simulated, planned_maintenance=final_jobs), catalog)
    rtf, pred = downtime(baseline, window), downtime(predictive, window)
    ceiling_began = time.perf_counter()
    perfect, ceiling_rounds = perfect_plan(simulated, catalog, window)
    ceiling = {
        **downtime(perfect, window),
        "rounds": ceiling_rounds,
        "seconds": round(time.perf_counter() - ceiling_began, 2),
    }
    # each failure the predictive arm still suffered: alerted too late for its job, or missed
    suffered = []
    pred["failures_late"] = pred["failures_missed"] = 0
    for failure in predictive.failures:
        if not window[0] <= failure.failed_at_ms < window[1]:
            continue
        before = [
            a
            for a in alerts
            if a["machine_id"] == failure.machine_id
            and failure.failed_at_ms - 24 * HOUR_MS <= a["alert_ms"] < failure.failed_at_ms
        ]
        verdict = "late" if before else "missed"
        pred[f"failures_{verdict}"] += 1
        suffered.append(
            {
                "machine_id": failure.machine_id,
                "failure_mode": failure.failure_mode,
                "failed_at_ms": failure.failed_at_ms,
                "degradation_h": round(
                    (failure.failed_at_ms - failure.degradation_start_ms) / HOUR_MS, 1
                ),
                "verdict": verdict,
            }
        )
    reduction = 1 - pred["downtime_h"] / rtf["downtime_h"] if rtf["downtime_h"] else 0.0
    unplanned = 1 - pred["unplanned_h"] / rtf["unplanned_h"] if rtf["unplanned_h"] else 0.0
    best = 1 - ceiling["downtime_h"] / rtf["downtime_h"] if rtf["downtime_h"] else 0.0
    return {
        "fleet": (
            f"{fleet.factories} factories x {fleet.machines_per_factory} machines, "
            f"{fleet.hours / 24:g} days from {fleet.start.date().isoformat()}"
            + (f" after {history_days:g} days of history" if history_days else "")
            + f", seed {fleet.seed}, MTBF {fleet.mtbf_hours:g} h, "
            f"readings every {fleet.interval_ms / 1000:g} s"
        ),
        "config": {
            "factories": fleet.factories,
            "machines_per_factory": fleet.machines_per_factory,
            "hours": fleet.hours,
            "seed": fleet.seed,
            "mtbf_hours": fleet.mtbf_hours,
            "interval_ms": fleet.interval_ms,
            "start": fleet.start.isoformat(),
            # the fleet runs (to failure, in both arms) from this many days before `start`;
            # the figures count only [start, start + hours)
            "history_days": history_days,
            "simulated_from": simulated.start.isoformat(),
        },
        "model": str(model_dir),
        "policy": asdict(policy),
        "run_to_failure": rtf,
        "predictive": pred,
        "downtime_reduction": round(reduction, 4),
        "unplanned_reduction": round(unplanned, 4),
        # the perfect planner (`perfect_plan`): one job an hour before each failure
        "ceiling": ceiling,
        "ceiling_reduction": round(best, 4),
        "extra_maintenance_h": pred["planned_h"],
        # jobs ordered at once on a CRITICAL alert (p >= urgent_probability): with a model whose
        # own alert threshold is that high, every job is one
        "urgent_jobs": sum(a["urgent"] for a in alerts),
        "escalated_jobs": sum(a["escalated"] for a in alerts),
        "goal_reduction": 0.5,
        "meets_goal": reduction >= 0.5,
        "jobs": alerts,
        "failures": suffered,  # those of the predictive arm: by mode, missed or late
        "iterations": iterations,
        "seconds": round(time.perf_counter() - began, 1),
    }


WHATIF_SEED_OFFSET = 2000  # the what-if's fleet: the run's seed + this
# The fleets the policy's parameters are chosen on (`choose_policy`, pooled): other seeds than
# the what-if's, so its figure is not the one the parameters were tuned to.
VALIDATION_SEED_OFFSETS = (3000, 4000)


def fleet_after_run(
    run_dir: Path, days: float = 7.0, seed_offset: int = WHATIF_SEED_OFFSET
) -> FleetConfig:
    """The run's fleet (factories, machines, sampling, MTBF) for the `days` after the run,
    on a seed of its own (readings the model was not trained on)."""
    manifest_path = run_dir / "simulation" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    config = manifest.get("config", {})
    base = FleetConfig()
    start = (
        datetime.fromtimestamp(manifest["end_ms"] / 1000, tz=UTC)
        if "end_ms" in manifest
        else base.start
    )
    return FleetConfig(
        factories=int(config.get("factories", base.factories)),
        machines_per_factory=int(config.get("machines_per_factory", base.machines_per_factory)),
        start=start,
        hours=days * 24,
        interval_ms=int(config.get("interval_ms", base.interval_ms)),
        seed=int(config.get("seed", base.seed)) + seed_offset,
        mtbf_hours=float(config.get("mtbf_hours", base.mtbf_hours)),
        malformed_rate=0.0,
    )


def check_inputs(run_dir: Path, days: float, history_days: float) -> Path:
    """`run_dir`'s compiled failure model, once the what-if's inputs are known to make sense:
    ValueError for days not positive or history days negative, FileNotFoundError without a
    model (before any fleet is simulated)."""
    if not math.isfinite(days) or days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    if not math.isfinite(history_days) or history_days < 0:
        raise ValueError(f"history days must be zero or more, got {history_days}")
    model_dir = run_dir / "ml" / "failure_model"
    if not (model_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no compiled failure model (run the ml step)")
    return model_dir


def write_whatif(
    run_dir: Path,
    days: float = 7.0,
    policy: Policy | None = None,
    history_days: float = HISTORY_DAYS,
    out: Path | None = None,
) -> Path:
    """Run the what-if with `run_dir`'s model on its fleet; write `out` (default
    `run_dir/whatif/whatif.json`)."""
    model_dir = check_inputs(run_dir, days, history_days)
    figures = run_whatif(
        fleet_after_run(run_dir, days), model_dir, policy=policy, history_days=history_days
    )
    out = out or run_dir / "whatif" / "whatif.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    return out


def pooled(fleets: list[dict[str, Any]]) -> dict[str, Any]:
    """Several fleets' what-if figures as one: the downtime hours summed per arm, and the
    reductions of the sums (a big fleet weighs by its hours, not as one fleet of many)."""
    hours = {
        arm: round(sum(f[arm]["downtime_h"] for f in fleets), 2)
        for arm in ("run_to_failure", "predictive", "ceiling")
    }
    base = hours["run_to_failure"]
    return {
        "fleets": len(fleets),
        "downtime_h": hours,
        "failures_left": sum(f["predictive"]["failures"] for f in fleets),
        "false_alarm_jobs": sum(f["predictive"]["false_alarm_jobs"] for f in fleets),
        "downtime_reduction": round(1 - hours["predictive"] / base, 4) if base else 0.0,
        "ceiling_reduction": round(1 - hours["ceiling"] / base, 4) if base else 0.0,
    }


class SweepError(ValueError):
    """The policy sweep cannot choose: no candidate, no fleet or one given twice, days not
    positive or history days negative, no model, or no failure on the fleets to reduce."""


def choose_policy(
    run_dir: Path,
    candidates: list[Policy],
    days: float = 7.0,
    history_days: float = HISTORY_DAYS,
    seed_offsets: tuple[int, ...] = VALIDATION_SEED_OFFSETS,
) -> tuple[Policy, list[dict[str, Any]]]:
    """The candidate with the largest downtime reduction on the validation fleets pooled (the
    run's fleet on each seed + offset of `seed_offsets`, simulated from `history_days` before
    its window), and each candidate's figures: per fleet and pooled. A fleet's figure moves by
    a few points with one failure caught or missed, so a choice made on one fleet is mostly
    that fleet's luck."""
    if not candidates:
        raise SweepError("no candidate policy to choose from")
    if not seed_offsets:
        raise SweepError("choose a policy on at least one fleet")
    if len(set(seed_offsets)) != len(seed_offsets):
        raise SweepError(f"a fleet given twice would count twice: {list(seed_offsets)}")
    try:  # without a model every failure is missed and all candidates tie
        model_dir = check_inputs(run_dir, days, history_days)
    except (FileNotFoundError, ValueError) as exc:
        raise SweepError(str(exc)) from exc
    catalog = load_catalog()
    fleets = [fleet_after_run(run_dir, days, offset) for offset in seed_offsets]
    measured: list[dict[str, Any]] = []
    for policy in candidates:
        per_fleet = []
        for offset, fleet in zip(seed_offsets, fleets, strict=True):
            figures = run_whatif(fleet, model_dir, catalog, policy, history_days=history_days)
            per_fleet.append(
                {
                    "seed_offset": offset,
                    **{
                        key: figures[key]
                        for key in (
                            "downtime_reduction",
                            "ceiling_reduction",
                            "ceiling",
                            "run_to_failure",
                            "predictive",
                            "failures",
                            "seconds",
                        )
                    },
                }
            )
        both = pooled(per_fleet)
        if not both["downtime_h"]["run_to_failure"]:  # the same arm for every candidate
            raise SweepError(
                f"no downtime to reduce on the fleets {list(seed_offsets)} (no failure in the "
                "run-to-failure arm): every candidate would score the same; choose on longer "
                "or more fleets"
            )
        measured.append(
            {
                "policy": asdict(policy),
                "history_days": history_days,
                "pooled": both,
                "fleets": per_fleet,
            }
        )
    best = max(range(len(candidates)), key=lambda i: measured[i]["pooled"]["downtime_reduction"])
    return candidates[best], measured


if __name__ == "__main__":  # python -m local_platform.report.whatif RUN: the validation sweep
    import argparse

    parser = argparse.ArgumentParser(description=choose_policy.__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument(
        "--history-days",
        type=float,
        default=HISTORY_DAYS,
        help="days the fleet runs before the window (both arms, not counted)",
    )
    parser.add_argument(
        "--seed-offset",
        type=int,
        nargs="+",
        default=list(VALIDATION_SEED_OFFSETS),
        help="the fleets, pooled: the run's seed + each of these, after RUN (default the "
        f"validation fleets', {' '.join(map(str, VALIDATION_SEED_OFFSETS))})",
    )
    sweep = {  # the Policy fields the sweep takes lists of, and what they are
        "min_gap_hours": "hours between two jobs on one machine",
        "prelude_hours": "hours of readings the predictor read before the fleet's start",
        "on_delay_minutes": "minutes the risk holds at or above the alert threshold before a job",
        "urgent_probability": "the probability of an alert served at once",
        "alert_threshold": "the planner's alert thresholds, never below the model's own",
    }
    for name, text in sweep.items():
        default = getattr(Policy, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=float,
            nargs="+",
            default=[default],
            help=f"{text} (default {default})",
        )
    args = parser.parse_args()
    try:  # a nonsense policy setting: on stderr, exit 2
        grid = [
            Policy(**dict(zip(sweep, values, strict=True)))
            for values in itertools.product(*(getattr(args, name) for name in sweep))
        ]
    except ValueError as exc:
        parser.error(str(exc))
    try:  # what the sweep cannot choose on (SweepError): the same
        chosen, rows = choose_policy(
            args.run, grid, args.days, args.history_days, tuple(args.seed_offset)
        )
    except SweepError as exc:
        parser.error(str(exc))
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"chosen": asdict(chosen)}))
