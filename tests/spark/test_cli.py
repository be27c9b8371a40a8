"""`iiot lake run/show/maintain` and the EMR entry point on a small landed run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from local_platform.steps.lake import land_simulation
from spark_jobs import io
from spark_jobs.cli import app


@pytest.fixture
def landed(tmp_path: Path, simulation: Path) -> Path:
    root = tmp_path / "lake"
    land_simulation(simulation, root / "landing", json_share=0.1, batch_readings=10_000)
    return root


def test_run_then_show_then_maintain(landed: Path, sail: Any) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["run", "--root", str(landed)])
    assert first.exit_code == 0, first.output
    assert "silver" in first.output
    again = runner.invoke(app, ["run", "--root", str(landed)])
    assert again.exit_code == 0, again.output
    assert "no new batches" in again.output
    shown = runner.invoke(app, ["show", "--root", str(landed)])
    assert shown.exit_code == 0, shown.output
    assert "silver.readings" in shown.output
    assert "quarantine" in shown.output
    maintained = runner.invoke(app, ["maintain", "--root", str(landed), "--retention-hours", "0"])
    assert maintained.exit_code == 0, maintained.output
    assert (landed / "silver/readings/_symlink_format_manifest").is_dir()
    # the fixture's own session is untouched by the command's server starting and stopping
    assert sail.range(3).count() == 3


def test_unknown_job_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--root", str(tmp_path), "--job", "platinum"])
    assert result.exit_code == 2


def test_emr_entry_point_runs_on_sail(
    landed: Path, capsys: pytest.CaptureFixture[str], sail: Any
) -> None:
    from spark_jobs.main import main

    uri = io.LakePaths.from_root(landed).root
    assert main(["--job", "all", "--lake-root", uri, "--engine", "sail"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [step["job"] for step in figures] == ["bronze", "silver", "gold"]
    assert sail.range(2).count() == 2
