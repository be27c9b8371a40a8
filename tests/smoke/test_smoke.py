"""`iiot smoke` against the connected platform's stand-ins (conftest.py): the same command the
pipeline runs after each deployment, as a process, with real brokers, moto, influxd and the
real lake job. What it claims is checked again here from the stores themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iiot.catalog import load_catalog
from local_platform.smoke import silver_rows
from tests.smoke.conftest import StandIns


def smoke(
    stand_ins: StandIns,
    outputs: Path,
    *args: str,
    local_lake: bool = True,
    influx_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "local_platform.cli",
        "smoke",
        "--env",
        "dev",
        "--outputs",
        str(outputs),
        "--iot-endpoint",
        f"mqtt://127.0.0.1:{stand_ins.cloud.port}",
        "--influx-url",
        influx_url or stand_ins.influx.url,
        *(["--local-lake", str(stand_ins.plan.lake_dir)] if local_lake else []),
        "--poll",
        "0.5",
        *args,
    ]
    # Our own interpreter running the project's command line; fixed argv.
    return subprocess.run(
        command,
        env={**os.environ, **stand_ins.env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _steps(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step"]: step for step in document["steps"]}


def test_the_test_batch_reaches_influxdb_and_silver_and_the_pipeline_starts(
    stand_ins: StandIns, tmp_path: Path
) -> None:
    outputs = stand_ins.write_outputs(tmp_path / "outputs.json")
    done = smoke(stand_ins, outputs, "--json", "--timeout", "300")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    steps = _steps(document)
    assert list(steps) == ["publish", "influx", "lake", "ml"]
    assert all(step["ok"] for step in steps.values()), steps
    assert "10/10 readings" in steps["influx"]["found"]
    assert "10/10 rows" in steps["lake"]["found"]
    assert "Succeeded" in steps["ml"]["found"]
    # Progress went to stderr, step by step.
    assert "smoke dev: lake: ok" in done.stderr

    # What the command claims, read back from the stores themselves.
    batch_id = document["batch_id"]
    machine = f"smoke-{document['run_id']}"
    metric = next(iter(load_catalog()))  # the test batch's metric
    series_found = stand_ins.influx.query(
        f'SELECT count("value") FROM "{metric}" WHERE "machine_id" = \'{machine}\'',
        "telemetry",
    )
    assert [series["values"][0][1] for series in series_found] == [10]
    uri = stand_ins.outputs["SilverReadingsUri"]
    dates = {f"{datetime.now(UTC) + timedelta(days=d):%Y-%m-%d}" for d in (-1, 0)}
    assert silver_rows(uri, "smoke", batch_id, tuple(sorted(dates)), None) == 10


def test_a_step_that_finds_nothing_fails_and_says_which_and_why(
    stand_ins: StandIns, tmp_path: Path
) -> None:
    # A topic no rule routes (the batch is acknowledged by the broker, then goes nowhere) and
    # a pipeline that does not exist.
    outputs = stand_ins.write_outputs(
        tmp_path / "outputs.json",
        SmokeTelemetryTopic="factory/unrouted/data",
        TrainingPipelineName="iiot-local-no-such-pipeline",
    )
    done = smoke(stand_ins, outputs, "--skip", "lake", "--timeout", "6")
    assert done.returncode == 1
    assert "step influx: InfluxDB bucket telemetry holds 0 of the batch's 10 readings" in (
        done.stderr
    )
    assert "step ml:" in done.stderr
    assert "iiot-local-no-such-pipeline" in done.stderr or "ResourceNotFound" in done.stderr
    assert "step publish" not in done.stderr  # the publish itself worked


def test_the_lake_step_starts_the_state_machine_and_fails_on_an_execution_that_never_ends(
    stand_ins: StandIns, tmp_path: Path
) -> None:
    """Without --local-lake the step starts the outputs' state machine (on moto, whose
    executions stay RUNNING) and waits for the execution: it fails, naming it, at the timeout."""
    from local_platform.connected.kinesis import client
    from local_platform.connected.runner import _environment

    with _environment(stand_ins.env):
        arn = client("stepfunctions").create_state_machine(
            name="iiot-local-lake-run",
            definition=json.dumps(
                {"StartAt": "Run", "States": {"Run": {"Type": "Pass", "End": True}}}
            ),
            roleArn="arn:aws:iam::123456789012:role/iiot-local-lake-run",
        )["stateMachineArn"]
    outputs = stand_ins.write_outputs(tmp_path / "outputs.json", LakeStateMachineArn=arn)
    done = smoke(
        stand_ins, outputs, "--skip", "influx", "--skip", "ml", "--timeout", "3", local_lake=False
    )
    assert done.returncode == 1, done.stderr
    assert "error: step lake: lake execution arn:aws:states:" in done.stderr
    assert ":execution:iiot-local-lake-run:smoke-" in done.stderr
    assert "still RUNNING after 3 s" in done.stderr


def test_missing_outputs_are_a_usage_error_naming_them(stand_ins: StandIns, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"SmokeTelemetryTopic": "factory/sensor/data"}))
    done = smoke(stand_ins, outputs)
    assert done.returncode == 2
    assert "LakeStateMachineArn" in done.stderr
    assert "iiot-<env>/*" in done.stderr


@pytest.mark.parametrize("bad", [["--env", "qa"], ["--skip", "everything"]])
def test_usage_errors_exit_2(bad: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "local_platform.cli", "smoke", "--env", "dev", *bad],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2
    assert "error:" in done.stderr
