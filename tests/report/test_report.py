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
from local_platform.report.run_data import collect

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_an_empty_run_directory_gives_a_report_of_absent_panels(tmp_path: Path):
    data = collect(tmp_path)
    for name in ("readings", "scatter", "anomalies", "reliability", "plan", "whatif"):
        assert data[name]["available"] is False, name
        assert data[name]["reason"]
    assert data["cost"]["available"]  # from the configuration, not the run
    html = write_report(tmp_path).read_text()
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
        if "when" in entry:
            assert entry["window"].startswith("night shift")
            assert entry["when"][11:16] == "22:00" or "under way" in entry["window"]
            if entry["probability"] < 0.8:
                assert "Saturday" in entry["window"]
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
    assert "data-errors" not in body.group(0), body.group(0)
    for name in CHART_PANELS:
        tag = re.search(rf'<div class="chart[^"]*" data-panel="{name}"[^>]*>', dom.stdout)
        assert tag is not None, f"panel {name} is missing"
        drawn = re.search(r'data-rendered="(\d+)"', tag.group(0))
        if name == "whatif" and "data-missing" in tag.group(0):
            continue  # the what-if has its own test
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
