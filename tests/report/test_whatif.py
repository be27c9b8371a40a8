"""The downtime what-if: the same fleet twice, the planner acting only on the predictor's
alerts, the figures the report shows."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from local_platform.cli import app
from local_platform.report.run_data import collect
from local_platform.report.whatif import (
    Policy,
    fleet_after_run,
    next_shift_change,
    run_whatif,
)
from local_platform.simulator import FleetConfig, FleetSimulator

runner = CliRunner()
HOUR = 3_600_000


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ("2026-01-05T05:10", "2026-01-05T06:00"),
        ("2026-01-05T06:00", "2026-01-05T06:00"),
        ("2026-01-05T15:00", "2026-01-05T22:00"),
        ("2026-01-05T23:30", "2026-01-06T06:00"),
    ],
)
def test_jobs_start_at_a_shift_change(after, expected):
    assert next_shift_change(_ms(after)) == _ms(expected)


def test_both_arms_share_the_fleet_until_a_job_changes_it(catalog):
    fleet = FleetConfig(factories=1, machines_per_factory=4, hours=96, seed=3, mtbf_hours=30)
    base = FleetSimulator(replace(fleet, planned_maintenance=()), catalog)
    target = base.failures[0]
    job = target.failed_at_ms - 2 * 3_600_000
    planned = FleetSimulator(
        replace(fleet, planned_maintenance=((target.machine_id, job),)), catalog
    )

    def history(sim, machine):
        return [(f.failed_at_ms, f.failure_mode) for f in sim.failures if f.machine_id == machine]

    for machine in {m.machine_id for m in base.machines} - {target.machine_id}:
        assert history(base, machine) == history(planned, machine)
    # a job inside the degradation averts that failure
    averted = [m for m in planned.maintenance if m.kind == "preventive"]
    assert [(m.machine_id, m.started_at_ms, m.averted_failure) for m in averted] == [
        (target.machine_id, job, job >= target.degradation_start_ms)
    ]
    assert target.failed_at_ms not in [f for f, _ in history(planned, target.machine_id)]


def test_a_job_before_the_degradation_is_an_inspection_and_the_failure_still_comes(catalog):
    fleet = FleetConfig(factories=1, machines_per_factory=4, hours=96, seed=3, mtbf_hours=30)
    base = FleetSimulator(replace(fleet, planned_maintenance=()), catalog)

    def running_before(failure) -> int:  # type: ignore[no-untyped-def]
        """When the machine last came back before this failure's degradation."""
        earlier = [
            f.repaired_at_ms
            for f in base.failures
            if f.machine_id == failure.machine_id and f.failed_at_ms < failure.failed_at_ms
        ]
        return max([fleet.start_ms, *earlier])

    target = next(f for f in base.failures if f.degradation_start_ms - running_before(f) > 6 * HOUR)
    job = target.degradation_start_ms - 3 * HOUR
    planned = FleetSimulator(
        replace(fleet, planned_maintenance=((target.machine_id, job),)), catalog
    )
    [inspection] = [m for m in planned.maintenance if m.kind == "preventive"]
    assert inspection.started_at_ms == job
    assert not inspection.averted_failure
    assert 0.5 * HOUR <= inspection.completed_at_ms - job <= 1.0 * HOUR
    # nothing was replaced: the machine fails as it would have, at the same time and mode
    assert [(f.failed_at_ms, f.failure_mode, f.degradation_start_ms) for f in planned.failures] == [
        (f.failed_at_ms, f.failure_mode, f.degradation_start_ms) for f in base.failures
    ]
    # a periodic plan (no planner) still renews the machine at every job, as before
    periodic = FleetSimulator(replace(fleet, preventive_interval_hours=20), catalog)
    jobs = [m for m in periodic.maintenance if m.kind == "preventive"]
    assert jobs
    assert all(m.completed_at_ms - m.started_at_ms >= HOUR for m in jobs)


@pytest.mark.slow
def test_whatif_on_a_run_and_in_the_report(full_run: Path, catalog):
    fleet = replace(fleet_after_run(full_run, days=2.0), machines_per_factory=2)
    figures = run_whatif(fleet, full_run / "ml" / "failure_model", catalog, Policy())
    rtf, pred = figures["run_to_failure"], figures["predictive"]
    assert rtf["planned_jobs"] == 0
    # the fixture's model holds its alerts from the first hours on: an alert already raised
    # when the planner starts watching plans a job too (a planner that plans nothing would
    # pass every identity below)
    assert pred["planned_jobs"] >= 1, "the predictor's alerts planned no job"
    assert pred["planned_jobs"] <= len(figures["jobs"])  # a job the machine is down for is not done
    assert pred["planned_jobs"] == pred["averted"] + pred["false_alarm_jobs"]
    for job in figures["jobs"]:
        # after the alert and its lead, at a shift change unless urgent
        assert job["job_ms"] >= job["alert_ms"] + Policy().lead_hours * 3_600_000
        hour = datetime.fromtimestamp(job["job_ms"] / 1000, tz=UTC)
        # urgent: the alert was, or the risk reached the urgent probability before the shift
        # change (escalated)
        urgent = job["probability"] >= Policy().urgent_probability
        assert job["urgent"] == (urgent or job["escalated"])
        assert job["escalated"] == (job["urgent"] and not urgent)
        assert job["urgent"] or (hour.hour, hour.minute) in {(6, 0), (14, 0), (22, 0)}
    assert figures["urgent_jobs"] == sum(job["urgent"] for job in figures["jobs"])
    assert figures["escalated_jobs"] == sum(job["escalated"] for job in figures["jobs"])
    # jobs inside a degradation avert its failure (the machine may fail again later: on the
    # fixture's 2 days that can cost more than it saves, which the test does not judge)
    assert pred["averted"] >= 1
    assert pred["downtime_h"] == pytest.approx(pred["unplanned_h"] + pred["planned_h"], abs=0.02)
    # each failure the predictive arm suffered, by mode and verdict
    suffered = figures["failures"]
    assert len(suffered) == pred["failures"]
    assert sum(f["verdict"] == "late" for f in suffered) == pred["failures_late"]
    assert sum(f["verdict"] == "missed" for f in suffered) == pred["failures_missed"]
    assert figures["downtime_reduction"] == pytest.approx(
        1 - pred["downtime_h"] / rtf["downtime_h"], abs=1e-3
    )
    (full_run / "whatif").mkdir(exist_ok=True)
    (full_run / "whatif" / "whatif.json").write_text(json.dumps(figures))
    panel = collect(full_run)["whatif"]
    assert panel["available"]
    assert panel["predictive"]["planned_jobs"] == pred["planned_jobs"]


def test_whatif_command_needs_a_model(tmp_path: Path):
    result = runner.invoke(app, ["whatif", "--run", str(tmp_path)])
    assert result.exit_code == 1
    assert "no compiled failure model" in result.output
    assert runner.invoke(app, ["whatif", "--help"]).exit_code == 0
