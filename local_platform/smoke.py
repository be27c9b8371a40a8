"""Post-deploy smoke tests of one environment (`iiot smoke --env ENV`).

What a deployment can only show in the account (docs/deploy.md, "What only a real account
shows"), checked end to end with one tagged test batch:

1. **publish**: a compact batch of `SMOKE_READINGS` readings of machine `smoke-<run id>` is
   published through IoT Core's data-plane endpoint on the smoke factory's telemetry topic,
   over MQTT (QoS 1: the broker's PUBACK is awaited).
2. **influx**: the InfluxDB writer has written every reading of the batch (InfluxQL through
   the v1-compatible `/query` endpoint, signed in with the writer's own secret). The instance
   is private to the environment's VPC, so where the `smoke` stack outputs an InfluxDB probe
   (`SmokeInfluxProbe`: a Lambda in the VPC, lambdas/smoke_probe) the step invokes it, and it
   runs the same count query (lambdas/smoke_probe/influx.py) from inside; without one, or with
   `--influx-via direct`, the query goes from here (inside the VPC, or the local stand-ins).
3. **lake**: the lake's state machine is started and its execution awaited; silver's readings
   table then holds the batch exactly once (by the batch id; read with delta-rs). Firehose
   buffers before it lands the batch, so the step runs the lake again until the batch is in
   silver or the step's time is up.
4. **ml**: the training pipeline is started and its execution is running or done (`--wait-ml`
   waits for it to succeed).

Each step reports what it found; a failed step names itself and why, and the run exits 1.

**Why MQTT with the step's IAM role** (rather than a test thing with a certificate): the
pipeline's smoke step already is an IAM principal, so it connects over MQTT on WebSockets
signed with SigV4 (port 443) under the `iiot-<env>-smoke` role, whose policy allows only
`iot:Connect` as `iiot-<env>-smoke-*` and `iot:Publish` on the smoke factory's telemetry
topic. No certificate and private key have to be created, stored and rotated for the smoke
tests, and nothing is added to the gateways' IoT policy. It is still the MQTT path the gateways
take (same broker, same rules), unlike the HTTPS `iot-data` Publish API. Locally (tests, the
connected platform) the same publisher speaks plain MQTT to mosquitto, IoT Core's stand-in.

Where the resources are comes from the outputs of the environment's `smoke`, `lake` and
`timeseries` stacks (stacks/smoke_stack.py), or a JSON file of the same keys (`--outputs`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from iiot.catalog import MetricCatalog
from iiot.contract import ReadingColumns, SeriesKey
from iiot.wire import encode_batch
from lambdas.smoke_probe.influx import InfluxQueryError, influx_count, influx_credentials

log = logging.getLogger(__name__)

SMOKE_READINGS = 10
STEPS = ("publish", "influx", "lake", "ml")
# The stack outputs the smoke tests read (stacks/smoke_stack.py: OUTPUTS, same keys).
OUTPUT_KEYS = {
    "telemetry_topic": "SmokeTelemetryTopic",
    "smoke_client_prefix": "SmokeClientPrefix",
    "lake_state_machine_arn": "LakeStateMachineArn",
    "silver_readings_uri": "SilverReadingsUri",
    "influx_url": "InfluxUrl",
    "influx_secret_arn": "InfluxSecretArn",
    "influx_org": "InfluxOrg",
    "influx_bucket": "InfluxBucket",
    "training_pipeline_name": "TrainingPipelineName",
}
# Outputs the smoke tests use when the environment has them.
OPTIONAL_OUTPUT_KEYS = {"influx_probe_function": "SmokeInfluxProbe"}
TERMINAL_LAKE = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
ML_RUNNING = ("Executing", "Succeeded")
ML_FAILED = ("Failed", "Stopped", "Stopping")

Progress = Callable[[str], None]


class SmokeError(Exception):
    """The smoke tests could not start (missing outputs, no credentials): exit 2."""


class StepFailedError(Exception):
    """A step found something wrong; the message says what."""


@dataclass(frozen=True, kw_only=True)
class SmokeTargets:
    """What the smoke tests check, from the environment's smoke stack outputs."""

    telemetry_topic: str
    smoke_client_prefix: str
    lake_state_machine_arn: str
    silver_readings_uri: str
    influx_url: str
    influx_secret_arn: str
    influx_org: str
    influx_bucket: str
    training_pipeline_name: str
    influx_probe_function: str = ""  # none: the influx step queries InfluxDB directly

    @property
    def factory_id(self) -> str:
        """The factory of the telemetry topic (`iiot/<env>/factory/<factory>/sensor/data`);
        locally (`factory/sensor/data`) the smoke factory `smoke`."""
        levels = self.telemetry_topic.split("/")
        return levels[3] if len(levels) > 4 and levels[2] == "factory" else "smoke"

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, str]) -> SmokeTargets:
        missing = [key for key in OUTPUT_KEYS.values() if not outputs.get(key)]
        if missing:
            raise SmokeError(
                f"the stack outputs lack {', '.join(missing)}: deploy the environment's stacks "
                "(npx cdk deploy 'iiot-<env>/*', which includes iiot-<env>/smoke) or give them "
                "in --outputs"
            )
        optional = {s: outputs[k] for s, k in OPTIONAL_OUTPUT_KEYS.items() if outputs.get(k)}
        return cls(**{setting: outputs[key] for setting, key in OUTPUT_KEYS.items()}, **optional)


# The stacks that output them (stacks/smoke_stack.py: SMOKE_OUTPUT_STACKS).
OUTPUT_STACKS = ("smoke", "lake", "timeseries")


def environment_outputs(cloudformation: Any, env: str) -> dict[str, str]:
    """The outputs of the environment's stacks that hold the smoke tests' outputs."""
    outputs: dict[str, str] = {}
    for concern in OUTPUT_STACKS:
        outputs.update(stack_outputs(cloudformation, f"iiot-{env}-{concern}"))
    return outputs


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    """A deployed stack's outputs, key -> value; SmokeError when it does not exist."""
    try:
        (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except Exception as error:  # botocore's ClientError: the stack does not exist, no access
        raise SmokeError(f"cannot read stack {stack_name}: {error}") from error
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


# ----------------------------------------------------------------------------- the batch


@dataclass(frozen=True)
class TestBatch:
    """The tagged batch: one machine named after the run, valid readings of one metric."""

    run_id: str
    batch_id: uuid.UUID
    payload: bytes
    factory_id: str
    machine_id: str
    metric: str
    readings: int
    first_ms: int
    last_ms: int

    @property
    def event_dates(self) -> tuple[str, ...]:
        """The UTC dates of its readings (silver's event_date partitions)."""
        return tuple(
            sorted(
                {
                    f"{datetime.fromtimestamp(ms / 1000, tz=UTC):%Y-%m-%d}"
                    for ms in (self.first_ms, self.last_ms)
                }
            )
        )


def make_test_batch(catalog: MetricCatalog, factory_id: str, run_id: str, now_ms: int) -> TestBatch:
    """SMOKE_READINGS readings, one a second up to `now_ms`, of the catalog's first metric, at
    the middle of its edge limits (valid, and no alert), as a compact batch."""
    metric_name = next(iter(catalog))
    metric = catalog[metric_name]
    low = metric.edge.min if metric.edge.min is not None else metric.valid_range.min
    high = metric.edge.max if metric.edge.max is not None else metric.valid_range.max
    value = round((low + high) / 2, metric.decimals)
    machine_id = f"smoke-{run_id}"
    key = SeriesKey(factory_id, machine_id, f"{machine_id}-{metric_name}", metric_name, metric.unit)
    timestamps = now_ms - 1000 * np.arange(SMOKE_READINGS - 1, -1, -1, dtype=np.int64)
    columns = ReadingColumns(
        series=[key],
        series_index=np.zeros(SMOKE_READINGS, dtype=np.int32),
        timestamp=timestamps,
        value=np.full(SMOKE_READINGS, value, dtype=np.float64),
    )
    batch_id = uuid.uuid4()
    payload = encode_batch(columns, batch_id=batch_id, producer=machine_id, created_ms=now_ms)
    return TestBatch(
        run_id,
        batch_id,
        payload,
        factory_id,
        machine_id,
        metric_name,
        SMOKE_READINGS,
        int(timestamps[0]),
        int(timestamps[-1]),
    )


# --------------------------------------------------------------------------------- ports


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes) -> str:
        """Publish at QoS 1 and wait for the broker's acknowledgment; say where it went."""
        ...


class LakeRunner(Protocol):
    def run(self, name: str, timeout_s: float) -> str:
        """Run the lake once and wait for it; say how it ended (StepFailedError if it failed)."""
        ...


@dataclass
class MqttPublisher:
    """Publishes over MQTT: `mqtt://host:port` (plain, the local stand-in) or a `wss://` URL
    (IoT Core over WebSockets, signed: `iot_websocket_url`)."""

    url: str
    client_id: str
    timeout_s: float = 30.0

    def publish(self, topic: str, payload: bytes) -> str:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        target = urllib.parse.urlsplit(self.url)
        websocket = target.scheme == "wss"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            transport="websockets" if websocket else "tcp",
        )
        if websocket:
            path = target.path + (f"?{target.query}" if target.query else "")
            client.ws_set_options(path=path)
            client.tls_set()
        connected = threading.Event()
        refused: list[str] = []

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
            if reason.is_failure:
                refused.append(str(reason))
            connected.set()

        client.on_connect = on_connect
        port = target.port or (443 if websocket else 1883)
        try:
            client.connect(target.hostname or "", port, keepalive=30)
        except OSError as error:
            raise StepFailedError(f"cannot reach {target.hostname}:{port}: {error}") from error
        client.loop_start()
        try:
            if not connected.wait(self.timeout_s) or refused:
                raise StepFailedError(
                    f"{target.hostname}:{port} refused the connection as {self.client_id}: "
                    f"{refused[0] if refused else 'no answer'}"
                )
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(self.timeout_s)
            if not info.is_published():
                raise StepFailedError(
                    f"no PUBACK for {topic} from {target.hostname} within {self.timeout_s:.0f} s"
                )
        finally:
            client.loop_stop()
            client.disconnect()
        return f"{target.hostname}:{port}"


def iot_websocket_url(endpoint: str, region: str, credentials: Any, expires_s: int = 300) -> str:
    """IoT Core's MQTT-over-WebSocket URL signed with SigV4 (service `iotdevicegateway`).
    The session token is added after signing, as IoT Core requires."""
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    frozen = credentials.get_frozen_credentials()
    request = AWSRequest(method="GET", url=f"wss://{endpoint}/mqtt")
    SigV4QueryAuth(
        Credentials(frozen.access_key, frozen.secret_key), "iotdevicegateway", region, expires_s
    ).add_auth(request)
    url = str(request.url)
    if frozen.token:
        url += "&X-Amz-Security-Token=" + urllib.parse.quote(frozen.token, safe="")
    return url


@dataclass
class StepFunctionsLake:
    """The deployed lake: start its state machine and wait for the execution."""

    stepfunctions: Any
    state_machine_arn: str
    poll_s: float = 10.0

    def run(self, name: str, timeout_s: float) -> str:
        started = self.stepfunctions.start_execution(
            stateMachineArn=self.state_machine_arn, name=name, input=json.dumps({"smoke": name})
        )
        arn = started["executionArn"]
        deadline = time.monotonic() + timeout_s
        while True:
            execution = self.stepfunctions.describe_execution(executionArn=arn)
            status = execution["status"]
            if status in TERMINAL_LAKE:
                break
            if time.monotonic() > deadline:
                raise StepFailedError(
                    f"lake execution {arn} still {status} after {timeout_s:.0f} s"
                )
            time.sleep(self.poll_s)
        if status != "SUCCEEDED":
            raise StepFailedError(
                f"lake execution {arn} ended {status}: {execution.get('error', '')} "
                f"{execution.get('cause', '')}".strip()
            )
        return f"execution {arn.rsplit(':', 1)[-1]} SUCCEEDED"


@dataclass
class LocalLake:
    """The lake job run locally (`iiot lake run` on `root`), in place of the state machine
    where it cannot execute (moto does not run state machines)."""

    root: Path
    log_dir: Path

    def run(self, name: str, timeout_s: float) -> str:
        from local_platform.connected.lake import LakeSchedule

        self.log_dir.mkdir(parents=True, exist_ok=True)
        schedule = LakeSchedule(self.root, self.log_dir, live_start_ms=0, every_s=0)
        result = schedule.run_once()
        if result.exit_code != 0:
            raise StepFailedError(f"the local lake run exited {result.exit_code}; see {result.log}")
        return f"local lake run {name} exited 0"


# --------------------------------------------------------------------------------- steps


@dataclass
class StepResult:
    step: str
    ok: bool
    found: str
    seconds: float


@dataclass
class SmokeReport:
    run_id: str
    batch_id: str
    results: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "batch_id": self.batch_id,
            "ok": self.ok,
            "steps": [vars(result) for result in self.results],
        }


class InfluxCounter(Protocol):
    def count(self, machine_id: str, metric: str, bucket: str) -> int:
        """How many readings of `metric` from `machine_id` the bucket holds."""
        ...


@dataclass
class DirectInflux:
    """The count query run from here (`--influx-via direct`): needs a network path to the
    InfluxDB URL, i.e. a machine inside the environment's VPC (or the local stand-ins)."""

    url: str
    secrets: Any
    secret_arn: str
    timeout_s: float = 30.0

    def count(self, machine_id: str, metric: str, bucket: str) -> int:
        credentials = influx_credentials(self.secrets, self.secret_arn)
        try:
            return influx_count(self.url, bucket, credentials, machine_id, metric, self.timeout_s)
        except InfluxQueryError as error:
            raise StepFailedError(str(error)) from error


@dataclass
class LambdaProbe:
    """The same count query run by the environment's probe Lambda in its VPC
    (lambdas/smoke_probe, `SmokeInfluxProbe` output; `--influx-via probe`): the smoke role may
    invoke it, and only it."""

    lambda_client: Any
    function_name: str

    def count(self, machine_id: str, metric: str, bucket: str) -> int:
        answer = self.lambda_client.invoke(
            FunctionName=self.function_name,
            InvocationType="RequestResponse",
            Payload=json.dumps({"machine_id": machine_id, "metric": metric, "bucket": bucket}),
        )
        document = json.loads(answer["Payload"].read() or b"null")
        if answer.get("FunctionError"):
            message = document.get("errorMessage") if isinstance(document, dict) else document
            raise StepFailedError(
                f"the InfluxDB probe {self.function_name} failed ({answer['FunctionError']}): "
                f"{message}"
            )
        return int(document["count"])


def s3_storage_options(session: Any) -> dict[str, str]:
    """delta-rs's S3 settings from a boto3 session: the same (possibly assumed-role)
    credentials and region, since delta-rs reads neither the session nor an assumed role;
    {} without credentials (a local table)."""
    credentials = session.get_credentials()
    if credentials is None:
        return {}
    frozen = credentials.get_frozen_credentials()
    options = {
        "AWS_ACCESS_KEY_ID": frozen.access_key,
        "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
    }
    if frozen.token:
        options["AWS_SESSION_TOKEN"] = frozen.token
    if session.region_name:
        options["AWS_REGION"] = session.region_name
    return options


def silver_rows(
    uri: str,
    factory_id: str,
    batch_id: str,
    event_dates: tuple[str, ...],
    storage_options: Mapping[str, str] | None,
) -> int:
    """Rows of silver's readings table from batch `batch_id` (hex) in the factory's partitions
    of `event_dates` (YYYY-MM-DD), 0 before the table exists. Silver's text columns may be
    Arrow string views, so the batch ids are compared as plain strings."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    except TableNotFoundError:
        return 0
    found = 0
    for event_date in event_dates:
        ids = table.to_pyarrow_table(
            columns=["batch_id"],
            filters=[
                ("event_date", "=", date.fromisoformat(event_date)),
                ("factory_id", "=", factory_id),
            ],
        ).column("batch_id")
        found += int(pc.sum(pc.equal(ids.cast(pa.string()), batch_id)).as_py() or 0)
    return found


@dataclass
class Smoke:
    """One smoke run against one environment, through injected ports and clients."""

    targets: SmokeTargets
    catalog: MetricCatalog
    publisher: Publisher
    lake: LakeRunner
    influx_counter: InfluxCounter
    sagemaker: Any
    storage_options: Mapping[str, str] | None = None
    step_timeout_s: float = 900.0
    poll_s: float = 5.0
    wait_ml: bool = False
    progress: Progress = lambda _message: None
    run_id: str = field(default_factory=lambda: f"{datetime.now(UTC):%Y%m%dT%H%M%S}")

    def run(self, skip: tuple[str, ...] = ()) -> SmokeReport:
        batch = make_test_batch(
            self.catalog, self.targets.factory_id, self.run_id, int(time.time() * 1000)
        )
        report = SmokeReport(self.run_id, batch.batch_id.hex)
        steps: dict[str, Callable[[TestBatch], str]] = {
            "publish": self.publish,
            "influx": self.influx,
            "lake": self.lake_step,
            "ml": self.ml,
        }
        for name, step in steps.items():
            if name in skip:
                continue
            self.progress(f"{name}: running")
            began = time.monotonic()
            try:
                found, ok = step(batch), True
            except StepFailedError as error:
                found, ok = str(error), False
            except Exception as error:  # an SDK error: which step and why, not a traceback
                found, ok = f"{type(error).__name__}: {error}", False
            result = StepResult(name, ok, found, round(time.monotonic() - began, 1))
            report.results.append(result)
            log.info("smoke step", extra={"step": name, "ok": ok, "found": found})
            self.progress(f"{name}: {'ok' if ok else 'FAILED'}: {found}")
            if not ok and name == "publish":
                break  # nothing can arrive anywhere
        return report

    def publish(self, batch: TestBatch) -> str:
        where = self.publisher.publish(self.targets.telemetry_topic, batch.payload)
        return (
            f"batch {batch.batch_id.hex} ({batch.readings} readings of {batch.metric}, machine "
            f"{batch.machine_id}) acknowledged by {where} on {self.targets.telemetry_topic}"
        )

    def _until(self, what: str, probe: Callable[[], int], wanted: int) -> tuple[int, float]:
        began = time.monotonic()
        deadline = began + self.step_timeout_s
        seen = -1
        while True:
            seen = probe()
            if seen >= wanted or time.monotonic() > deadline:
                return seen, time.monotonic() - began
            time.sleep(self.poll_s)

    def influx(self, batch: TestBatch) -> str:
        bucket = self.targets.influx_bucket
        seen, waited = self._until(
            "influx",
            lambda: self.influx_counter.count(batch.machine_id, batch.metric, bucket),
            batch.readings,
        )
        if seen != batch.readings:
            raise StepFailedError(
                f"InfluxDB bucket {bucket} holds {seen} of the batch's {batch.readings} readings "
                f"({batch.metric}, machine_id={batch.machine_id}) after {waited:.0f} s: is the "
                "InfluxDB writer consuming the telemetry stream (its errors, its dead letters)?"
            )
        return f"{seen}/{batch.readings} readings in bucket {bucket} after {waited:.0f} s"

    def lake_step(self, batch: TestBatch) -> str:
        uri = self.targets.silver_readings_uri
        began = time.monotonic()
        deadline = began + self.step_timeout_s
        runs: list[str] = []
        rows = 0
        while True:
            left = max(deadline - time.monotonic(), 1.0)
            runs.append(self.lake.run(f"smoke-{batch.run_id}-{len(runs) + 1}", left))
            rows = silver_rows(
                uri, batch.factory_id, batch.batch_id.hex, batch.event_dates, self.storage_options
            )
            if rows or time.monotonic() > deadline:
                break
            # Firehose may not have landed the batch yet: wait and run again.
            time.sleep(self.poll_s)
        waited = time.monotonic() - began
        if rows != batch.readings:
            raise StepFailedError(
                f"silver ({uri}) holds {rows} rows of batch {batch.batch_id.hex} (expected "
                f"{batch.readings}) after {len(runs)} lake run(s), {waited:.0f} s; last: "
                f"{runs[-1]}. Look for the batch in the landing zone and silver.quarantine"
            )
        return (
            f"{rows}/{batch.readings} rows of batch {batch.batch_id.hex} in silver after "
            f"{len(runs)} lake run(s) ({runs[-1]}), {waited:.0f} s"
        )

    def ml(self, batch: TestBatch) -> str:
        name = self.targets.training_pipeline_name
        started = self.sagemaker.start_pipeline_execution(
            PipelineName=name,
            PipelineExecutionDisplayName=f"smoke-{batch.run_id}",
            PipelineExecutionDescription=f"iiot smoke run {batch.run_id}",
            ClientRequestToken=batch.batch_id.hex,  # 32 characters: one execution per batch
        )
        arn = started["PipelineExecutionArn"]
        began = time.monotonic()
        while True:
            status = self.sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)[
                "PipelineExecutionStatus"
            ]
            if status in ML_FAILED:
                raise StepFailedError(f"pipeline {name} execution {arn} is {status}")
            done = status == "Succeeded" or (not self.wait_ml and status in ML_RUNNING)
            if done:
                return f"pipeline {name} execution {arn.rsplit('/', 1)[-1]} {status}"
            if time.monotonic() - began > self.step_timeout_s:
                raise StepFailedError(f"pipeline {name} execution {arn} still {status}")
            time.sleep(self.poll_s)
