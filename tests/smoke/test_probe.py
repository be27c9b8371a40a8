"""The InfluxDB probe (lambdas/smoke_probe): its handler run for real against the local influxd
with the writer's secret from moto, and `iiot smoke` counting the test batch through it, the
probe invoked through Lambda's Invoke API (tests/smoke/invoker.py runs the handler in this
process: moto's Lambda would need Docker)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from iiot.catalog import load_catalog
from lambdas.smoke_probe import handler as probe
from lambdas.smoke_probe.influx import InfluxQueryError
from local_platform.connected import aws
from tests.smoke.conftest import StandIns
from tests.smoke.invoker import LocalInvoker
from tests.smoke.test_smoke import smoke

PROBE_NAME = "iiot-local-smoke-influx-probe"


def _write(stand_ins: StandIns, metric: str, machine_id: str, values: list[float]) -> None:
    """Points as the writer writes them: measurement = metric, tag machine_id, field value."""
    now_ns = time.time_ns()
    lines = "\n".join(
        f"{metric},machine_id={machine_id} value={value} {now_ns - i * 1_000_000_000}"
        for i, value in enumerate(values)
    )
    request = urllib.request.Request(
        f"{stand_ins.influx.url}/write?db={aws.INFLUX_BUCKET}", data=lines.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 204


@pytest.fixture
def probe_environment(stand_ins: StandIns) -> dict[str, str]:
    """The probe function's environment as the smoke stack sets it, plus the local AWS APIs."""
    return {
        **stand_ins.env,
        "INFLUXDB_URL": stand_ins.influx.url,
        "INFLUXDB_SECRET_ARN": stand_ins.outputs["InfluxSecretArn"],
    }


@pytest.fixture
def invoker(probe_environment: dict[str, str]) -> Iterator[LocalInvoker]:
    probe._secrets = None  # a client made inside the probe's environment (moto)
    local = LocalInvoker(PROBE_NAME, probe.handler, probe_environment)
    try:
        yield local
    finally:
        local.close()
        probe._secrets = None


def test_the_probe_handler_counts_one_machines_readings_of_one_metric(
    stand_ins: StandIns, probe_environment: dict[str, str]
) -> None:
    from local_platform.connected.runner import _environment

    metric, other = list(load_catalog())[:2]
    _write(stand_ins, metric, "probe-a", [1.0, 2.0, 3.0])
    _write(stand_ins, metric, "probe-b", [4.0])
    _write(stand_ins, other, "probe-a", [5.0, 6.0])
    event = {"machine_id": "probe-a", "metric": metric, "bucket": aws.INFLUX_BUCKET}
    probe._secrets = None
    with _environment(probe_environment):
        assert probe.handler(event, None) == {"count": 3}
        assert probe.handler({**event, "machine_id": "probe-b"}, None) == {"count": 1}
        assert probe.handler({**event, "metric": other}, None) == {"count": 2}
        assert probe.handler({**event, "machine_id": "probe-none"}, None) == {"count": 0}


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"machine_id": "x' OR 1=1 --"}, "machine id"),
        ({"metric": 'a" FROM b'}, "metric"),
        ({"bucket": None}, "needs machine_id, metric and bucket"),
    ],
)
def test_the_probe_refuses_input_that_is_not_a_plain_name(
    stand_ins: StandIns, probe_environment: dict[str, str], change: dict[str, str], refused: str
) -> None:
    from local_platform.connected.runner import _environment

    event = {"machine_id": "m", "metric": "temperature", "bucket": aws.INFLUX_BUCKET, **change}
    event = {key: value for key, value in event.items() if value is not None}
    probe._secrets = None
    with _environment(probe_environment), pytest.raises(InfluxQueryError, match=refused):
        probe.handler(event, None)


def test_iiot_smoke_counts_the_batch_in_influxdb_through_the_probe(
    stand_ins: StandIns, invoker: LocalInvoker, tmp_path: Path
) -> None:
    """The outputs name the probe: the influx step invokes it (by default, and with
    --influx-via probe) and no longer queries InfluxDB itself. The --influx-url given here
    points nowhere, so a direct query could not have found the batch."""
    outputs = stand_ins.write_outputs(tmp_path / "outputs.json", SmokeInfluxProbe=PROBE_NAME)
    lambda_endpoint = {"AWS_ENDPOINT_URL_LAMBDA": invoker.url}
    for via in ((), ("--influx-via", "probe")):
        done = smoke(
            stand_ins,
            outputs,
            "--json",
            "--skip",
            "lake",
            "--skip",
            "ml",
            "--timeout",
            "120",
            *via,
            influx_url="http://127.0.0.1:9",
            extra_env=lambda_endpoint,
        )
        assert done.returncode == 0, done.stderr
        document = json.loads(done.stdout)
        influx = {step["step"]: step for step in document["steps"]}["influx"]
        assert influx["ok"], influx
        assert "10/10 readings" in influx["found"]
        # The probe was asked for this run's batch: its machine, the catalog's first metric.
        asked = invoker.invocations[-1]
        assert asked == {
            "machine_id": f"smoke-{document['run_id']}",
            "metric": next(iter(load_catalog())),
            "bucket": aws.INFLUX_BUCKET,
        }


def test_a_probe_that_fails_fails_the_influx_step_with_its_message(
    stand_ins: StandIns, invoker: LocalInvoker, tmp_path: Path
) -> None:
    # The outputs name a bucket the probe refuses: the function error reaches the step.
    outputs = stand_ins.write_outputs(
        tmp_path / "outputs.json", SmokeInfluxProbe=PROBE_NAME, InfluxBucket="no'bucket"
    )
    done = smoke(
        stand_ins,
        outputs,
        "--skip",
        "lake",
        "--skip",
        "ml",
        "--timeout",
        "5",
        extra_env={"AWS_ENDPOINT_URL_LAMBDA": invoker.url},
    )
    assert done.returncode == 1
    assert f"step influx: the InfluxDB probe {PROBE_NAME} failed (Unhandled)" in done.stderr
    assert 'bucket "no\'bucket" is not a plain name' in done.stderr


def test_influx_via_probe_without_a_probe_output_is_a_usage_error(
    stand_ins: StandIns, tmp_path: Path
) -> None:
    outputs = stand_ins.write_outputs(tmp_path / "outputs.json")
    done = smoke(stand_ins, outputs, "--influx-via", "probe")
    assert done.returncode == 2
    assert "SmokeInfluxProbe" in done.stderr
