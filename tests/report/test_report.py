"""The fleet report: what it reads from a run, that it works on any run directory, and that a
real browser (headless Chromium) draws every panel without an error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from local_platform.cli import app
from local_platform.report.html import CHART_PANELS, write_report
from local_platform.report.run_data import (
    Run,
    alert_precision,
    collect,
    maintenance_plan,
    reliability,
)
from local_platform.report.whatif import Policy

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_an_empty_run_directory_gives_a_report_of_absent_panels(tmp_path: Path):
    data = collect(tmp_path)
    for name in ("readings", "scatter", "anomalies", "reliability", "plan", "whatif"):
        assert data[name]["available"] is False, name
        assert data[name]["reason"]
    assert data["cost"]["available"]  # from the configuration, not the run
    prices = data["cost"]["prices"]
    assert sum(prices["statuses"].values()) == prices["count"] > 0
    html = write_report(tmp_path).read_text()
    assert f"{prices['count']} AWS on-demand list prices" in html  # how sure the figures are
    assert html.count("Not in this run") >= 6
    # offline: nothing is loaded from elsewhere
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) is None


def test_a_broken_input_says_so_instead_of_failing(tmp_path: Path):
    (tmp_path / "simulation").mkdir()
    (tmp_path / "simulation" / "readings.parquet").write_bytes(b"not parquet")
    (tmp_path / "simulation" / "machines.csv").write_text("factory_id,machine_id,model\n")
    data = collect(tmp_path)
    assert data["readings"]["available"] is False
    write_report(tmp_path)


def test_a_run_without_simulation_files_shows_the_lake_readings(full_run: Path, tmp_path: Path):
    """A connected run keeps no simulation files: its readings come from silver."""
    (tmp_path / "lake").symlink_to(full_run / "lake")
    panel = collect(tmp_path)["readings"]
    assert panel["available"]
    assert len(panel["series"]) == 6


def test_reliability_kpis_plan_and_health_from_a_run(full_run: Path):
    data = collect(full_run)
    rel = data["reliability"]
    assert rel["available"]
    failures = rel["failures"]
    assert failures, "the fixture fleet fails within its 48 h"
    assert rel["caught"] + rel["missed"] == len(failures)
    for machine in rel["machines"]:
        assert 0 <= machine["availability"] <= 1
        assert machine["downtime_h"] == pytest.approx(
            machine["unplanned_h"] + machine["planned_h"], abs=0.02
        )
    for failure in failures:
        if failure["caught"]:
            assert 0 < failure["lead_h"] <= 24
    plan = data["plan"]
    assert len(plan["ranking"]) == 6
    probabilities = [entry["probability"] for entry in plan["ranking"]]
    assert probabilities == sorted(probabilities, reverse=True)
    for entry in plan["ranking"]:
        # a job for every machine at or above the job threshold (the policy's, never below the
        # model's alert threshold), none below it
        assert plan["job_threshold"] == max(plan["alert_threshold"], Policy().alert_threshold)
        assert ("when" in entry) == (entry["probability"] >= plan["job_threshold"])
        if "when" in entry and "urgent" not in entry["window"]:
            assert entry["when"][11:16] in {"06:00", "14:00", "22:00"}
    health = data["data_path"]
    assert health["contract_quarantine"] == {"unit": 1, "payload": 1}
    assert health["reconciliation"]["reconciliation.json"]["ok"] is True
    assert "faults.json" in health["documents"]
    assert data["scatter"]["anomalies"] > 0
    assert {"lake z-score flags", "failure predictor alerts"} <= {
        source for counts in data["anomalies"]["counts"].values() for source in counts
    }
    precision = {row["source"]: row for row in data["precision"]["rows"]}
    assert "failure predictor (replayed)" in precision


T0 = 1767571200000  # 2026-01-05 00:00 UTC, a Monday
H = 3_600_000


def _history() -> dict:
    """Two machines over 24 h: M1 fails at 10:00 (repaired by 14:00); M2 failed 2 h before the
    run (repaired at 01:00) and has a planned job 20:00-22:00."""

    def job(machine: str, kind: str, begin: int, end: int) -> dict[str, str]:
        return {
            "machine_id": machine,
            "kind": kind,
            "started_at_ms": str(T0 + begin * H),
            "completed_at_ms": str(T0 + end * H),
        }

    return {
        "machines": [
            {"machine_id": "F01-M001", "factory_id": "F01", "model": "CP-200"},
            {"machine_id": "F01-M002", "factory_id": "F01", "model": "CP-200"},
        ],
        "failures": [
            {
                "failure_id": "FL-1",
                "factory_id": "F01",
                "machine_id": "F01-M001",
                "failure_mode": "seal_leak",
                "failed_at_ms": str(T0 + 10 * H),
            },
            {
                "failure_id": "FL-0",
                "factory_id": "F01",
                "machine_id": "F01-M002",
                "failure_mode": "bearing_wear",
                "failed_at_ms": str(T0 - 2 * H),
            },
        ],
        "maintenance": [
            job("F01-M001", "corrective", 10, 14),
            job("F01-M002", "corrective", -2, 1),
            job("F01-M002", "preventive", 20, 22),
        ],
        "start_ms": T0,
        "end_ms": T0 + 24 * H,
        "manifest": {},
    }


def _predictions(last: dict[str, float], alerts: dict[str, list[int]]) -> dict:
    return {
        m: {"factory_id": "F01", "last": p, "alerts": alerts.get(m, [])} for m, p in last.items()
    }


def test_reliability_figures_worked_by_hand():
    predictions = _predictions(
        {"F01-M001": 0.1, "F01-M002": 0.1}, {"F01-M001": [T0 + 4 * H, T0 + 6 * H]}
    )
    rel = reliability(_history(), predictions)
    m1, m2 = rel["machines"]
    assert (m1["downtime_h"], m1["unplanned_h"], m1["planned_h"]) == (4.0, 4.0, 0.0)
    assert (m1["availability"], m1["failures"], m1["mtbf_h"], m1["mttr_h"]) == (
        round(20 / 24, 4),
        1,
        20.0,
        4.0,
    )
    # the failure before the run is not in its count; the part of its repair inside the run is
    # downtime, and its whole repair is a repair time
    assert (m2["downtime_h"], m2["unplanned_h"], m2["planned_h"]) == (3.0, 1.0, 2.0)
    assert (m2["availability"], m2["failures"], m2["mtbf_h"], m2["mttr_h"]) == (
        0.875,
        0,
        None,
        3.0,
    )
    [factory] = rel["factories"]
    assert factory["availability"] == round(1 - 7 / 48, 4)
    assert (factory["downtime_h"], factory["failures"], factory["mtbf_h"]) == (7.0, 1, 41.0)
    assert factory["mttr_h"] == 3.5
    [failure] = rel["failures"]
    assert (failure["failure_id"], failure["caught"], failure["lead_h"]) == ("FL-1", True, 6.0)
    assert (rel["caught"], rel["missed"], rel["failures_before"]) == (1, 0, 1)
    # an alert more than 24 h before the failure, or after it, does not catch it
    late = reliability(_history(), _predictions({"F01-M001": 0.1}, {"F01-M001": [T0 + 11 * H]}))
    assert (late["caught"], late["missed"]) == (0, 1)


def test_the_factory_mttr_counts_every_repair_once():
    history = _history()
    history["machines"].append({"machine_id": "F01-M003", "factory_id": "F01", "model": "SP-100"})
    for begin in (2, 6):  # two repairs of 2 h
        history["maintenance"].append(
            {
                "machine_id": "F01-M003",
                "kind": "corrective",
                "started_at_ms": str(T0 + begin * H),
                "completed_at_ms": str(T0 + (begin + 2) * H),
            }
        )
    [factory] = reliability(history, None)["factories"]
    assert factory["mttr_h"] == (4 + 3 + 2 + 2) / 4  # not the machines' means' mean (3.0)


def test_the_plan_follows_the_what_ifs_policy_and_the_alert_threshold():
    history = _history()
    rel = reliability(history, None)
    predictions = _predictions({"F01-M001": 0.97, "F01-M002": 0.85, "F01-M003": 0.79}, {})
    # the default policy orders a job on a CRITICAL risk only (p >= 0.95, at once); the model's
    # alert at 0.85 is watched
    default = maintenance_plan(predictions, rel, history["end_ms"], alert_threshold=0.8)
    assert default["job_threshold"] == 0.95
    assert [e["machine_id"] for e in default["ranking"] if "when" in e] == ["F01-M001"]
    assert default["ranking"][0]["window"].startswith("night shift 22:00-06:00 (urgent")
    # a policy that orders jobs on every alert: the model's threshold
    plan = maintenance_plan(
        predictions,
        rel,
        history["end_ms"],
        alert_threshold=0.8,
        policy=Policy(alert_threshold=None),
    )
    by_machine = {e["machine_id"]: e for e in plan["ranking"]}
    assert [e["machine_id"] for e in plan["ranking"]] == ["F01-M001", "F01-M002", "F01-M003"]
    # p >= 0.95: after the 0.5 h lead, at once; otherwise the first shift change after it
    assert by_machine["F01-M001"]["when"] == "2026-01-06 00:30"
    assert by_machine["F01-M001"]["window"].startswith("night shift 22:00-06:00 (urgent")
    assert by_machine["F01-M002"]["when"] == "2026-01-06 06:00"
    assert by_machine["F01-M002"]["window"].startswith("early shift 06:00-14:00")
    assert "when" not in by_machine["F01-M003"]  # below the alert threshold
    assert plan["planned"] == 2
    assert plan["repair_h"] == 3.5  # the machines' mean repair times, 4 h and 3 h
    assert by_machine["F01-M002"]["downtime_avoided_h"] == round(0.85 * (3.5 - 2), 2)
    assert plan["downtime_avoided_h"] == round(0.97 * 1.5, 2) + round(0.85 * 1.5, 2)


def test_report_command(full_run: Path, tmp_path: Path):
    out = tmp_path / "fleet.html"
    result = runner.invoke(app, ["report", "--run", str(full_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output.replace("\n", "")
    assert out.stat().st_size < 5_000_000
    missing = runner.invoke(app, ["report", "--run", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert runner.invoke(app, ["report", "--help"]).exit_code == 0


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=30000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/bootstrap.sh test)"
)
def test_every_panel_renders_in_chromium(full_run: Path, capsys: pytest.CaptureFixture[str]):
    report = write_report(full_run)
    dom = _chromium("--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    errors = [line for line in console if re.search(r"error|uncaught", line, re.IGNORECASE)]
    assert errors == [], errors
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None
    assert 'data-ready="1"' in body.group(0), "the charts never finished drawing"
    assert "Every count reconciles" in dom.stdout
    # the what-if against its ceiling (the fixture's figures, or test_whatif's real ones)
    assert "A planner that knew every failure time" in dom.stdout
    # axes carry their titles (plotly.js 3 drops a title given as a bare string)
    drawn_titles = set(re.findall(r'<text class="[xy]title"[^>]*>([^<]+)</text>', dom.stdout))
    assert {"USD per machine a month", "machine-hours of downtime", "pressure (bar)"} <= (
        drawn_titles
    ), drawn_titles
    assert "data-errors" not in body.group(0), body.group(0)
    for name in CHART_PANELS:
        tag = re.search(rf'<div class="chart[^"]*" data-panel="{name}"[^>]*>', dom.stdout)
        assert tag is not None, f"panel {name} is missing"
        drawn = re.search(r'data-rendered="(\d+)"', tag.group(0))
        assert drawn is not None, f"panel {name} was not drawn"
        assert int(drawn.group(1)) > 0, f"panel {name} drew nothing"
    # kept outside pytest's rotating temporary folders, so it outlives later test runs
    shots = Path(
        os.environ.get("IIOT_REPORT_SCREENSHOTS", Path(tempfile.gettempdir()) / "iiot-report")
    )
    shots.mkdir(parents=True, exist_ok=True)
    png = shots / "report.png"
    shutil.copy(report, shots / "report.html")
    shot = _chromium("--window-size=1400,5400", f"--screenshot={png}", report.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png.stat().st_size > 50_000
    with capsys.disabled():
        print(f"\nreport screenshot: {png}\nreport: {shots / 'report.html'}")


def test_alerts_too_close_to_the_runs_end_are_open_and_widen_the_precision(tmp_path: Path):
    history = _history()
    alerts = {
        # followed by FL-1 at 10:00; 28 h before FL-0, too early (a false alarm); 2 h before
        # the end, nothing followed yet (open)
        "F01-M001": [T0 + 4 * H],
        "F01-M002": [T0 - 30 * H, T0 + 22 * H],
    }
    panel = alert_precision(
        Run(tmp_path), _predictions({"F01-M001": 0.1, "F01-M002": 0.1}, alerts), history
    )
    [row] = panel["rows"]
    assert (row["alerts"], row["followed"], row["open"]) == (3, 1, 1)
    # between 1 of 3 (the open one a false alarm) and 2 of 3 (the open one right)
    assert (row["precision"], row["precision_open_right"]) == (0.333, 0.667)
