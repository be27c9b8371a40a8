import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from local_platform.cli import app

runner = CliRunner()


def test_every_command_has_help():
    for args in (
        ["--help"],
        ["simulate", "--help"],
        ["validate", "--help"],
        ["demo", "--help"],
        ["catalog", "show", "--help"],
        ["catalog", "check", "--help"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_simulate_writes_files_and_reports_rate(tmp_path: Path):
    result = runner.invoke(
        app,
        [
            "simulate",
            "--factories",
            "2",
            "--machines",
            "3",
            "--hours",
            "2",
            "--seed",
            "1",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "readings per second" in result.output
    assert (tmp_path / "readings.parquet").exists()
    assert (tmp_path / "maintenance_records.csv").exists()


def test_simulate_usage_errors_exit_2_on_stderr(tmp_path: Path):
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "local_platform.cli",
            "simulate",
            "--interval-ms",
            "5",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert process.returncode == 2
    assert "interval must be between" in process.stderr
    assert process.stdout == ""


def test_validate_reports_rejects_and_exits_1(tmp_path: Path):
    good = {
        "timestamp": 1_767_571_200_000,
        "factory_id": "F01",
        "machine_id": "M1",
        "sensor_id": "s1",
        "metric": "rpm",
        "value": 1500.0,
        "unit": "rpm",
    }
    bad = {**good, "unit": "rps"}
    payloads = tmp_path / "in.jsonl"
    payloads.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\nnot json\n")
    quarantine = tmp_path / "q.jsonl"
    result = runner.invoke(app, ["validate", str(payloads), "--quarantine", str(quarantine)])
    assert result.exit_code == 1
    assert "accepted 1 readings, rejected 2" in result.output
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [r["line"] for r in records] == [2, 3]
    assert "does not match the catalog's unit" in records[0]["reason"]


def test_catalog_check_and_show(tmp_path: Path):
    assert runner.invoke(app, ["catalog", "check"]).exit_code == 0
    shown = runner.invoke(app, ["catalog", "show"])
    assert "temperature" in shown.output
    broken = tmp_path / "bad.yaml"
    broken.write_text("version: 1\nmetrics:\n  rpm: {unit: rpm}\n")
    result = runner.invoke(app, ["catalog", "check", str(broken)])
    assert result.exit_code == 1
    assert "metric 'rpm'" in result.output


def test_demo_runs_the_core_steps_and_prints_their_figures(tmp_path: Path):
    """Each part's demo step has its own test (tests/<part>/test_demo.py); here the CLI runs
    the core steps and prints the summary."""
    args = ["demo", "--work-dir", str(tmp_path), "--hours", "2", "--machines", "3"]
    result = runner.invoke(app, [*args, "--step", "simulate", "--step", "contract"])
    assert result.exit_code == 0, result.output
    assert "demo finished" in result.output
    assert "compact batch bytes/reading" in result.output
    assert (tmp_path / "quarantine.jsonl").exists()


def test_every_demo_step_is_registered_once_in_order():
    from local_platform.demo import demo_steps

    steps = demo_steps()
    assert [title for title, _ in steps] == ["simulate", "contract", "lake", "stream", "edge", "ml"]
    assert all(callable(step) for _, step in steps)
