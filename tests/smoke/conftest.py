"""The connected platform's cloud stand-ins, started the way the connected run starts them
(local_platform/connected/runner.py: `Run`), for `iiot smoke` to check for real:

* mosquitto as IoT Core's endpoint, with the IoT rules process (telemetry rule -> Kinesis);
* moto_server for Kinesis, S3, Secrets Manager, Step Functions and SageMaker, with the
  resources the stacks create (`aws.create_resources`) and the training pipeline (the real
  pipeline definition);
* the delivery stream (Kinesis -> the landing zone) and the InfluxDB writer Lambda on its
  event source (Kinesis -> a real influxd through the v2 write relay);
* the lake: the real `iiot lake run` over the landing zone, run by the smoke's local lake
  runner (moto does not execute state machines).

Every process is bound to 127.0.0.1 and stopped by its PID at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iiot import topics
from local_platform.connected import aws
from local_platform.connected.influxd import InfluxServer, V2WriteRelay, start_influxd
from local_platform.connected.kinesis import aws_environment, client
from local_platform.connected.plan import Plan, Topology
from local_platform.connected.runner import Run, _environment
from local_platform.localbroker import Mosquitto, free_port

PIPELINE_NAME = "iiot-local-failure-model"
PIPELINE_DEFINITION = Path(__file__).resolve().parents[2] / "ml_pipeline/pipeline_definition.json"


@dataclass
class StandIns:
    plan: Plan
    env: dict[str, str]
    cloud: Mosquitto
    influx: InfluxServer
    outputs: dict[str, str]

    def write_outputs(self, path: Path, **changes: str) -> Path:
        path.write_text(json.dumps({**self.outputs, **changes}))
        return path


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIns]:
    plan = Plan(
        work_dir=tmp_path_factory.mktemp("smoke-platform"),
        factories=1,
        machines_per_factory=1,
        hours=1,
        history_hours=0,
        model_lifecycle=False,
        firehose_buffer_s=0.5,
    )
    for folder in (plan.run_dir, plan.status_dir, plan.landing_dir):
        folder.mkdir(parents=True, exist_ok=True)
    plan.write()
    run = Run(plan, lambda *_: None)
    cloud = Mosquitto.create(persistent=True, log_subscriptions=True)
    influx: InfluxServer | None = None
    relay: V2WriteRelay | None = None
    try:
        moto_port = free_port()
        run.supervisor.start(
            "moto",
            aws.moto_command(moto_port),
            ready=lambda: aws.listening(moto_port),
            ready_timeout_s=120,
        )
        run.env = aws_environment(moto_port)
        with _environment(run.env):
            run.resources = aws.create_resources()
            sagemaker = client("sagemaker")
            sagemaker.create_pipeline(
                PipelineName=PIPELINE_NAME,
                PipelineDefinition=PIPELINE_DEFINITION.read_text(),
                RoleArn=f"arn:aws:iam::123456789012:role/{PIPELINE_NAME}",
            )
        influx_root = plan.cloud_dir / "influxd"
        influx_root.mkdir(parents=True, exist_ok=True)
        influx = start_influxd(influx_root)
        influx.query(f'CREATE DATABASE "{aws.INFLUX_BUCKET}"')
        relay = run.relay = V2WriteRelay(influx.url)
        relay.keep_lines = False
        Topology(
            cloud_broker=cloud.port,
            input_brokers={},
            uplinks={},
            moto=moto_port,
            influx=relay.url,
            influx_query=influx.url,
        ).write(plan.run_dir)
        run.supervisor.start(
            "iot-rules",
            run._python("local_platform.connected.ingress"),
            env=run.env,
            ready=lambda: cloud.subscribed("iot-rules", topics.ANOMALIES),
        )
        run.supervisor.start(
            "firehose",
            run._python("local_platform.connected.firehose"),
            env=run.env,
            ready=lambda: (plan.status_dir / "firehose.json").exists(),
        )
        run._start_functions()  # the InfluxDB writer and the alert router, as the run does
        outputs = {
            "SmokeTelemetryTopic": topics.SENSOR_DATA,
            "SmokeClientPrefix": "iiot-local-smoke-",
            "LakeStateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:local",
            "SilverReadingsUri": str(plan.lake_dir / "silver" / "readings"),
            "InfluxUrl": relay.url,
            "InfluxSecretArn": run.resources.influx_secret_arn,
            "InfluxOrg": aws.INFLUX_ORG,
            "InfluxBucket": aws.INFLUX_BUCKET,
            "TrainingPipelineName": PIPELINE_NAME,
        }
        yield StandIns(plan, run.env, cloud, influx, outputs)
    finally:
        run.supervisor.stop_all()
        if relay is not None:
            relay.close()
        if influx is not None:
            influx.stop()
        cloud.close()
