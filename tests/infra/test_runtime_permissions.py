"""Each runtime's real AWS calls, checked against its role's policies in the synthesized
templates (dev): a call the role does not allow fails the test, naming the missing grant.

A runtime runs its own code against moto, under the names and ARNs the templates give its
resources (tests/infra/harness/model.py); every botocore call it makes is recorded and turned
into what IAM checks, implied accesses included (the key of an encrypted topic, the role handed
to a job: harness/access.py). Where the caller is an AWS service working from a definition the
stacks deploy (Step Functions, SageMaker Pipelines, CodeBuild, the Greengrass nucleus), the
harness replays that definition's calls (harness/workflows.py).

`test_figures` prints what each runtime was checked for (`pytest tests/infra -k figures -s`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from iiot.anomaly import Anomaly, encode_anomaly
from local_platform.connected.local_http import LocalHttpServer
from tests.infra.conftest import Synth
from tests.infra.harness.access import Access, accesses, denied
from tests.infra.harness.fake_cloud import provision
from tests.infra.harness.model import ACCOUNT, REGION, Cloud, Resource
from tests.infra.harness.policy import Permissions, role_permissions, roles_assumed_by
from tests.infra.harness.recorder import Call, recording
from tests.infra.harness.workflows import (
    artifact_accesses,
    custom_resource_calls,
    job_accesses,
    pipeline_calls,
    rule_target_accesses,
    run_buildspec,
    state_machine_calls,
    topic_rule_accesses,
)

# What each runtime was checked for, by the tests below (printed by test_figures).
FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def cloud(synth: Synth) -> Cloud:
    return Cloud.from_paths(
        {
            f"iiot-{env}-{concern}": path
            for (env, concern), path in synth.template_paths.items()
            if env == "dev"
        }
    )


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto for every AWS call, in the harness's account and region, no real credentials."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "MOTO_ACCOUNT_ID": ACCOUNT,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


def check(
    runtime: str, cloud: Cloud, permissions: Permissions, calls: list[Call], *extra: Access
) -> list[Access]:
    """Every access the calls need (and `extra`: what a service does with the role), each
    allowed; records the figures. Returns the accesses checked."""
    needed = [access for call in calls for access in accesses(call, cloud)] + list(extra)
    figures = FIGURES.setdefault(runtime, {"calls": 0, "operations": set(), "accesses": set()})
    figures["calls"] += len(calls)
    figures["operations"] |= {str(call) for call in calls}
    figures["accesses"] |= {(a.action, a.resource) for a in needed}
    missing = denied(permissions, needed)
    assert not missing, f"{runtime} ({permissions.role}) is not allowed:\n" + "\n".join(
        f"  {access}" for access in missing
    )
    return needed


def lambda_function(cloud: Cloud, handler: str) -> tuple[Resource, dict[str, str], Permissions]:
    """The function with `handler`, its environment as deployed, and its role's permissions."""
    (function,) = [
        f
        for f in cloud.resources("AWS::Lambda::Function")
        if f.properties.get("Handler") == handler
    ]
    role_arn = cloud.resolve(function.stack, function.properties["Role"])
    (role,) = [
        r for r in cloud.resources("AWS::IAM::Role") if cloud.attributes(r)["Arn"] == role_arn
    ]
    variables = cloud.resolve(function.stack, function.properties["Environment"]["Variables"])
    return function, variables, role_permissions(cloud, role)


def resource_named(cloud: Cloud, kind: str, identifier: str) -> Resource:
    """The resource of `kind` whose Ref, name or ARN is `identifier`."""
    for resource in cloud.resources(kind):
        attributes = cloud.attributes(resource)
        if identifier in (cloud.name(resource), attributes["Ref"], attributes.get("Arn")):
            return resource
    raise LookupError(f"no {kind} is {identifier}")


def kinesis_event(payloads: list[bytes]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "F01",
                    "sequenceNumber": str(index + 1),
                    "data": base64.b64encode(payload).decode(),
                    "approximateArrivalTimestamp": 1767571200.0,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"shardId-000000000000:{index + 1}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT}:role/test",
                "awsRegion": REGION,
                "eventSourceARN": f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/test",
            }
            for index, payload in enumerate(payloads)
        ]
    }


class LambdaContext:
    function_name = "harness"
    memory_limit_in_mb = 256
    invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:harness"
    aws_request_id = "request-1"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def anomaly(**changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "factory_id": "F01",
        "machine_id": "F01-M003",
        "metric": "temperature",
        "anomaly_type": "TEMPERATURE_HIGH",
        "severity": "WARNING",
        "value": 104.25,
        "threshold": 100.0,
        "timestamp": 1_767_571_200_000,
        "source": "stream",
    }
    return encode_anomaly(Anomaly(**(fields | changes)))


# --- the Lambda functions ------------------------------------------------------------------


def test_alert_router(cloud: Cloud, fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from lambdas.alert_router import handler

    _, variables, permissions = lambda_function(cloud, "lambdas.alert_router.handler.handler")
    provision(
        cloud,
        resource_named(cloud, "AWS::SNS::Topic", variables["ALERT_TOPIC_ARN"]),
        resource_named(cloud, "AWS::SNS::Topic", variables["ESCALATION_TOPIC_ARN"]),
        resource_named(cloud, "AWS::DynamoDB::Table", variables["COOLDOWN_TABLE"]),
        resource_named(cloud, "AWS::DynamoDB::Table", variables["IDEMPOTENCY_TABLE"]),
        resource_named(cloud, "AWS::DynamoDB::Table", variables["MACHINE_STATE_TABLE"]),
        resource_named(cloud, "AWS::SQS::Queue", variables["DEAD_LETTER_QUEUE_URL"]),
    )
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    handler._build.cache_clear()
    event = kinesis_event(
        [
            anomaly(),
            anomaly(severity="CRITICAL", value=125.0, threshold=120.0, machine_id="F01-M004"),
            b'{"machine_id": "half an anomaly"}',
            anomaly(),  # a redelivery: the idempotency record stops a second alert
            # a rate-of-change alarm: the router asks the machine state when it was serviced
            anomaly(anomaly_type="RAPID_CHANGE", metric="rpm", value=600.0, threshold=120.0),
        ]
    )
    with recording() as calls:
        assert handler.handler(event, LambdaContext()) == {"batchItemFailures": []}
    handler._build.cache_clear()
    operations = {str(call) for call in calls}
    assert {"sns.Publish", "sqs.SendMessage", "dynamodb.PutItem", "dynamodb.Query"} <= operations
    check("alert router (Lambda)", cloud, permissions, calls)


class InfluxV2Endpoint:
    """Stands in for Timestream for InfluxDB (the writer's HTTP calls are not AWS calls): the
    v2 sign-in and write endpoints answer 204."""

    def __init__(self) -> None:
        self.writes = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.writes += self.path.startswith("/api/v2/write")
                self.send_response(204)
                self.send_header("Set-Cookie", "session=harness")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = LocalHttpServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


def test_influx_writer(cloud: Cloud, fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from iiot.contract import Reading, ReadingColumns
    from iiot.wire import encode_batch
    from lambdas.influx_writer import handler

    _, variables, permissions = lambda_function(cloud, "lambdas.influx_writer.handler.handler")
    secret = resource_named(cloud, "AWS::SecretsManager::Secret", variables["INFLUXDB_SECRET_ARN"])
    # The secret as the stack generates it: the admin's name and password.
    provision(cloud, secret, secret_value={"username": "iiot-admin", "password": "p" * 32})
    provision(
        cloud,
        resource_named(cloud, "AWS::DynamoDB::Table", variables["IDEMPOTENCY_TABLE"]),
        resource_named(cloud, "AWS::SQS::Queue", variables["DEAD_LETTER_QUEUE_URL"]),
    )
    influx = InfluxV2Endpoint()
    # Resolved again: the secret's ARN (in the variables and the policies) is the one moto made.
    _, variables, permissions = lambda_function(cloud, "lambdas.influx_writer.handler.handler")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("INFLUXDB_URL", influx.url)  # the instance's endpoint is not AWS's API
    handler._build.cache_clear()
    readings = [
        Reading(
            1_767_571_200_000 + i * 1000,
            "F01",
            "F01-M001",
            "F01-M001-temperature",
            "temperature",
            60.0 + i,
            "degC",
        )
        for i in range(10)
    ]
    batch = encode_batch(ReadingColumns.from_readings(readings))
    try:
        with recording() as calls:
            result = handler.handler(
                kinesis_event([batch, b"this is not telemetry"]), LambdaContext()
            )
        # Signed out while the endpoint still answers (else the client's finaliser complains).
        handler.dependencies().service._writer.close()  # type: ignore[attr-defined]
    finally:
        handler._build.cache_clear()
        influx.close()
    assert result == {"batchItemFailures": []}
    assert influx.writes
    operations = {str(call) for call in calls}
    assert {"secretsmanager.GetSecretValue", "sqs.SendMessage"} <= operations
    assert not any(call.service == "kinesis" for call in calls)  # it forwards nothing
    check("InfluxDB writer (Lambda)", cloud, permissions, calls)


def test_stream_rules_read_telemetry_through_their_consumer(cloud: Cloud, fake_aws: None) -> None:
    """The Flink application's Kinesis calls, as its role: the source of the connector the
    package carries (flink-connector-aws-kinesis-streams 5.0, EFO reader, self-managed
    consumer) describes the stream, lists its shards, describes its consumer and subscribes to
    each shard through it; the sinks put anomalies and dead letters. Replayed with boto3 (moto
    has no SubscribeToShard, whose call is recorded as the connector makes it); polling and
    registering a consumer are denied."""
    (application,) = cloud.resources("AWS::KinesisAnalyticsV2::Application")
    props = cloud.resolve(application.stack, application.properties)
    (group,) = [
        g["PropertyMap"]
        for g in props["ApplicationConfiguration"]["EnvironmentProperties"]["PropertyGroups"]
        if g["PropertyGroupId"] == "StreamRules"
    ]
    telemetry = group["source.stream.arn"]
    name = group["source.source.efo.consumer.name"]
    sinks = [group["sink.stream.arn"], group["deadletter.stream.arn"]]
    provision(
        cloud, *(resource_named(cloud, "AWS::Kinesis::Stream", s) for s in [telemetry, *sinks])
    )
    kinesis = boto3.client("kinesis")
    # what CloudFormation does (AWS::Kinesis::StreamConsumer), before the application starts
    registered = kinesis.register_stream_consumer(StreamARN=telemetry, ConsumerName=name)
    consumer = cloud.find("AWS::Kinesis::StreamConsumer", ConsumerName=name)
    cloud.bind(consumer.stack, consumer.logical_id,
               ConsumerARN=registered["Consumer"]["ConsumerARN"])  # fmt: skip
    permissions = role_arn_permissions(cloud, props["ServiceExecutionRole"])
    with recording() as calls:
        kinesis.describe_stream_summary(StreamARN=telemetry)
        shards = kinesis.list_shards(StreamARN=telemetry)["Shards"]
        described = kinesis.describe_stream_consumer(StreamARN=telemetry, ConsumerName=name)
        for stream in sinks:
            kinesis.put_records(StreamARN=stream, Records=[{"Data": b"{}", "PartitionKey": "k"}])
    consumer_arn = described["ConsumerDescription"]["ConsumerARN"]
    calls += [
        Call("kinesis", "SubscribeToShard",
             {"ConsumerARN": consumer_arn, "ShardId": shard["ShardId"],
              "StartingPosition": {"Type": "LATEST"}}, REGION)
        for shard in shards
    ]  # fmt: skip
    assert shards
    check("stream rules (Managed Flink)", cloud, permissions, calls)
    polling = [
        Access("kinesis:GetRecords", telemetry, "polling the telemetry stream"),
        Access("kinesis:GetShardIterator", telemetry, "polling the telemetry stream"),
        Access("kinesis:RegisterStreamConsumer", telemetry, "a job-managed consumer"),
        Access("kinesis:PutRecords", telemetry, "writing the telemetry stream"),
    ]
    assert denied(permissions, polling) == polling


def test_figures() -> None:
    for runtime, figures in FIGURES.items():
        print(runtime, figures["calls"], sorted(figures["operations"]))
        for a in sorted(figures["accesses"]):
            print("   ", a)


# --- the services that call AWS for the platform ----------------------------------------------


def role_arn_permissions(cloud: Cloud, role_arn: str) -> Permissions:
    (role,) = [
        r for r in cloud.resources("AWS::IAM::Role") if cloud.attributes(r)["Arn"] == role_arn
    ]
    return role_permissions(cloud, role)


def machine_permissions(cloud: Cloud, machine: Resource) -> Permissions:
    return role_arn_permissions(cloud, cloud.resolve(machine.stack, machine.properties["RoleArn"]))


def test_lake_run(cloud: Cloud) -> None:
    """The lake state machine submits, polls and cancels each Spark job as the job role."""
    (machine,) = [
        m for m in cloud.resources("AWS::StepFunctions::StateMachine") if m.stack.endswith("-lake")
    ]
    from stacks.lake_stack import LAKE_JOBS  # bronze, silver, gold, maintenance, maintain

    calls = state_machine_calls(cloud, machine, {})
    assert [c.operation for c in calls].count("StartJobRun") == len(LAKE_JOBS) == 5
    check("lake run (Step Functions)", cloud, machine_permissions(cloud, machine), calls)
    (schedule,) = [r for r in cloud.resources("AWS::Events::Rule") if r.stack.endswith("-lake")]
    for role_arn, access in rule_target_accesses(cloud, schedule):
        check(
            "lake schedule (EventBridge)", cloud, role_arn_permissions(cloud, role_arn), [], access
        )


def pipeline(cloud: Cloud) -> Resource:
    (found,) = cloud.resources("AWS::SageMaker::Pipeline")
    return found


def test_sagemaker_pipeline_steps(cloud: Cloud) -> None:
    """Every step, both branches of the PR-AUC gate, with the parameters' defaults (what the
    schedule starts): the pipeline's role creates the jobs and registers the models, each job
    runs as its role."""
    found = pipeline(cloud)
    role = role_arn_permissions(cloud, cloud.resolve(found.stack, found.properties["RoleArn"]))
    calls, jobs = pipeline_calls(cloud, found)
    operations = {str(c) for c in calls}
    assert {"sagemaker.CreateProcessingJob", "sagemaker.CreateTrainingJob",
            "sagemaker.CreateModelPackage"} <= operations  # fmt: skip
    check("SageMaker pipeline (its role)", cloud, role, calls)
    assert {job.step for job in jobs} >= {"Features", "Train", "Evaluate", "CompileForGateways"}
    for job in jobs:
        check(f"SageMaker job {job.step}", cloud, role_arn_permissions(cloud, job.role_arn), [],
              *job_accesses(cloud, job))  # fmt: skip


def test_pipeline_is_started_on_schedule_and_on_new_silver(cloud: Cloud) -> None:
    rules = [r for r in cloud.resources("AWS::Events::Rule") if "Retrain" in r.logical_id]
    assert {r.logical_id for r in rules} == {"RetrainOnSchedule", "RetrainOnNewSilver"}
    pipeline_arn = cloud.arn("sagemaker", f"pipeline/{cloud.name(pipeline(cloud))}")
    (lake_run,) = [
        m for m in cloud.resources("AWS::StepFunctions::StateMachine") if m.stack.endswith("-lake")
    ]
    for rule in rules:
        accesses_ = rule_target_accesses(cloud, rule)
        assert [a.resource for _, a in accesses_] == [pipeline_arn]
        for role_arn, access in accesses_:
            check(
                "retraining (EventBridge)", cloud, role_arn_permissions(cloud, role_arn), [], access
            )
    (on_silver,) = [r for r in rules if r.logical_id == "RetrainOnNewSilver"]
    pattern = cloud.resolve(on_silver.stack, on_silver.properties["EventPattern"])
    assert pattern["detail"] == {
        "status": ["SUCCEEDED"],
        "stateMachineArn": [cloud.attributes(lake_run)["Arn"]],
    }


# The model components the ML stack publishes: component -> (its package group's name part,
# the zip a version carries). The two flows are one construct; each may reach only its own.
PUBLISHED_MODELS = {
    "com.iiot.FailureModel": ("failure", "failure_model.zip"),
    "com.iiot.AnomalyModel": ("anomaly", "anomaly_model.zip"),
}


def publish_flow(cloud: Cloud, component: str) -> Resource:
    """The ML stack's state machine that publishes `component` (its notification names it)."""
    local = component.rsplit(".", 1)[-1]
    (machine,) = [
        m for m in cloud.resources("AWS::StepFunctions::StateMachine")
        if m.stack.endswith("-ml") and f"com.iiot.dev.{local} " in json.dumps(
            cloud.resolve(m.stack, m.properties["DefinitionString"]))
    ]  # fmt: skip
    return machine


def model_group(cloud: Cloud, component: str) -> str:
    kind, _ = PUBLISHED_MODELS[component]
    (group,) = [g for g in cloud.resources("AWS::SageMaker::ModelPackageGroup")
                if f"-{kind}-" in cloud.name(g)]  # fmt: skip
    return cloud.name(group)


def approval_event(cloud: Cloud, component: str) -> dict[str, Any]:
    return {
        "detail": {
            "ModelPackageArn": cloud.arn(
                "sagemaker", f"model-package/{model_group(cloud, component)}/3"
            )
        },
        "model": {"modelDataUrl": model_data_url(cloud, component), "version": 3},
    }


# Two pipeline runs (execution ids), each writing under <OutputS3Uri>/<execution id>/: the
# approved package is the older run's, approved after the newer run wrote its own models.
OLDER_RUN, NEWER_RUN = "a1b2c3d4e5f6", "f6e5d4c3b2a1"


def pipeline_output(cloud: Cloud, run: str = OLDER_RUN) -> tuple[str, str]:
    """A run's output folder (the pipeline's default OutputS3Uri, then the run's execution id,
    as every output of the definition is joined) and the model artifact its Train step
    writes."""
    found = pipeline(cloud)
    body = found.properties["PipelineDefinition"]["PipelineDefinitionBody"]
    definition = json.loads(cloud.resolve(found.stack, body))
    (output,) = [p["DefaultValue"] for p in definition["Parameters"] if p["Name"] == "OutputS3Uri"]
    assert '{"Get": "Execution.PipelineExecutionId"}' in json.dumps(definition)
    folder = f"{output}/{run}"
    return folder, f"{folder}/model/pipelines-{run}-train-x1y2z3/output/model.tar.gz"


def model_data_url(cloud: Cloud, component: str, run: str = OLDER_RUN) -> str:
    """The ModelDataUrl the pipeline registers for `component`'s model in a run: the failure
    model's training artifact; the anomaly detector's zip (TrainAnomalyModel's `anomaly`
    output)."""
    output, model_data = pipeline_output(cloud, run)
    if component == "com.iiot.AnomalyModel":
        return f"{output}/anomaly/anomaly_model.zip"
    return model_data


@pytest.mark.parametrize("component", sorted(PUBLISHED_MODELS))
def test_model_publish_flow(cloud: Cloud, component: str) -> None:
    """Approval -> describe the package -> run the publish build -> notify the encrypted topic;
    the flow may describe its own group's packages only."""
    machine = publish_flow(cloud, component)
    calls = state_machine_calls(cloud, machine, approval_event(cloud, component))
    assert {"sagemaker.DescribeModelPackage", "codebuild.StartBuild", "sns.Publish"} <= {
        str(c) for c in calls
    }
    permissions = machine_permissions(cloud, machine)
    check("model publish flow (Step Functions)", cloud, permissions, calls)
    (other,) = set(PUBLISHED_MODELS) - {component}
    assert denied(permissions, [Access(
        "sagemaker:DescribeModelPackage",
        cloud.arn("sagemaker", f"model-package/{model_group(cloud, other)}/3"),
        "another model's package",
    )])  # fmt: skip
    (on_approval,) = [
        r for r in cloud.resources("AWS::Events::Rule") if "OnApproval" in r.logical_id
        and model_group(cloud, component) in json.dumps(r.properties["EventPattern"])
    ]  # fmt: skip
    for role_arn, access in rule_target_accesses(cloud, on_approval):
        assert access.resource == cloud.attributes(machine)["Arn"]
        check(
            "approval rule (EventBridge)", cloud, role_arn_permissions(cloud, role_arn), [], access
        )


def published_recipe(
    cloud: Cloud, workdir: Path, component: str = "com.iiot.FailureModel"
) -> tuple[Permissions, list[Call]]:
    from stacks.constructs.model_publish_flow import PUBLISHED_MODELS as MODELS
    from stacks.constructs.model_publish_flow import stage_source

    (model,) = [m for m in MODELS if m.component == component]
    (project,) = [p for p in cloud.resources("AWS::CodeBuild::Project")
                  if "publish_component.py" in json.dumps(p.properties)
                  and f"greengrass/{component}/" in json.dumps(p.properties)]  # fmt: skip
    # A CodeBuild S3 source is a zip (or a folder), never a lone file.
    assert str(cloud.resolve(project.stack, project.properties["Source"]["Location"])).endswith(
        ".zip"
    )
    calls = run_buildspec(
        cloud, project, Path(stage_source(model)),
        {"MODEL_DATA_URL": model_data_url(cloud, component), "MODEL_PACKAGE_VERSION": "3"},
        workdir,
    )  # fmt: skip
    role = role_arn_permissions(
        cloud, cloud.resolve(project.stack, project.properties["ServiceRole"])
    )
    return role, calls


@pytest.mark.parametrize("component", sorted(PUBLISHED_MODELS))
def test_model_publish_build(cloud: Cloud, tmp_path: Path, component: str) -> None:
    """The buildspec and publish_component.py, run for real: the copy of the pipeline's zip and
    the component version (Greengrass digests its artifact with the caller's role). The build
    may publish its own component only."""
    role, calls = published_recipe(cloud, tmp_path, component)
    assert [str(c) for c in calls] == ["s3.CopyObject", "greengrassv2.CreateComponentVersion"]
    _, artifact = PUBLISHED_MODELS[component]
    copy = calls[0].params
    assert copy["CopySource"]["Key"].endswith(f"/{artifact}")
    # the approved package's own model: its run's folder, not the newer run's
    source = f"s3://{copy['CopySource']['Bucket']}/{copy['CopySource']['Key']}"
    older, _ = pipeline_output(cloud, OLDER_RUN)
    newer, _ = pipeline_output(cloud, NEWER_RUN)
    assert source.startswith(f"{older}/")
    assert not source.startswith(f"{newer}/")
    assert copy["Key"] == f"greengrass/{component}/1.0.3/{artifact}"
    recipe = json.loads(calls[1].params["inlineRecipe"])
    local = component.rsplit(".", 1)[-1]
    assert recipe["ComponentName"] == f"com.iiot.dev.{local}"
    assert recipe["ComponentVersion"] == "1.0.3"
    assert recipe["ComponentConfiguration"]["DefaultConfiguration"]["modelVersion"] == "3"
    check("model publish build (CodeBuild)", cloud, role, calls)
    (other,) = set(PUBLISHED_MODELS) - {component}
    other_local = other.rsplit(".", 1)[-1]
    bucket = f"arn:{cloud.partition}:s3:::{copy['Bucket']}"
    elsewhere = [
        Access("s3:PutObject", f"{bucket}/greengrass/{other}/1.0.3/x.zip", "another component"),
        Access("s3:PutObject", f"{bucket}/greengrass/com.iiot.SensorBuffer/1.0.3/x.zip", "code"),
        Access("greengrass:CreateComponentVersion",
               cloud.arn("greengrass", f"components:com.iiot.dev.{other_local}"), "another"),
        Access("greengrass:CreateComponentVersion",
               cloud.arn("greengrass", "components:com.iiot.dev.FailurePredictor"), "code"),
    ]  # fmt: skip
    assert denied(role, elsewhere) == elsewhere


def test_gateway_token_exchange(cloud: Cloud, tmp_path: Path) -> None:
    """The Greengrass nucleus installs every component version the factories' deployments
    name, and the published FailureModel and AnomalyModel, with the token-exchange role."""
    (role,) = roles_assumed_by(cloud, "credentials.iot.amazonaws.com")
    permissions = role_permissions(cloud, role)
    recipes = {}
    for version in cloud.resources("AWS::GreengrassV2::ComponentVersion"):
        recipe = json.loads(cloud.resolve(version.stack, version.properties["InlineRecipe"]))
        recipes[recipe["ComponentName"]] = recipe
    deployed = {
        name
        for deployment in cloud.resources("AWS::GreengrassV2::Deployment")
        for name in deployment.properties["Components"]
        if name.startswith("com.iiot.")
    }
    assert deployed <= set(recipes)
    for component in PUBLISHED_MODELS:
        _, calls = published_recipe(cloud, tmp_path / component, component)
        published = json.loads(calls[1].params["inlineRecipe"])
        recipes[published["ComponentName"]] = published
    assert {"com.iiot.dev.FailureModel", "com.iiot.dev.AnomalyModel"} <= set(recipes)
    needed = [
        access
        for name, recipe in recipes.items()
        for access in artifact_accesses(cloud, recipe, f"Greengrass installs {name}")
    ]
    assert needed
    check("gateway token exchange (Greengrass)", cloud, permissions, [], *needed)


def test_iot_rules(cloud: Cloud) -> None:
    rules = cloud.resources("AWS::IoT::TopicRule")
    assert len(rules) >= 3
    for rule in rules:
        for role_arn, access in topic_rule_accesses(cloud, rule):
            check("IoT rules", cloud, role_arn_permissions(cloud, role_arn), [], access)


def test_aws_custom_resources(cloud: Cloud) -> None:
    """CDK's AwsCustomResource calls (the Flink application's start, the warehouse's secret
    lookup) as the provider's role with each one's policy."""
    resources = cloud.resources("Custom::AWS")
    assert any("startApplication" in json.dumps(r.properties) for r in resources)
    for resource in resources:
        role_arn, calls = custom_resource_calls(cloud, resource)
        check(f"custom resource {resource.logical_id}", cloud,
              role_arn_permissions(cloud, role_arn), calls)  # fmt: skip


def test_influx_retention_handler(cloud: Cloud, fake_aws: None) -> None:
    """The retention custom resource's handler, run for real: reads the InfluxDB secret."""
    from stacks.constructs import influx_retention_handler as handler
    from tests.infra.test_influx_retention import InfluxApi

    (resource,) = cloud.resources("Custom::InfluxBucketRetention")
    secret = resource_named(
        cloud, "AWS::SecretsManager::Secret",
        cloud.resolve(resource.stack, resource.properties["SecretArn"]),
    )  # fmt: skip
    provision(cloud, secret, secret_value={"username": "iiot-admin", "password": "secret"})
    (function,) = [f for f in cloud.resources("AWS::Lambda::Function")
                   if f.properties.get("Handler") == "index.on_event"
                   and "retention" in json.dumps(f.properties.get("Description", ""))]  # fmt: skip
    permissions = role_arn_permissions(
        cloud, cloud.resolve(function.stack, function.properties["Role"])
    )
    api = InfluxApi([{"id": "0a1b2c", "name": "telemetry", "retentionRules": []}])
    properties = {**cloud.resolve(resource.stack, resource.properties), "Url": api.url}
    try:
        with recording() as calls:
            handler.on_event({"RequestType": "Create", "ResourceProperties": properties})
    finally:
        api.close()
    assert [str(c) for c in calls] == ["secretsmanager.GetSecretValue"]
    check("InfluxDB retention (custom resource)", cloud, permissions, calls)
