"""The CDK wiring of the stacks of each environment (used by app.py and the tests).

`build_app` reads the deployment inputs from the app's CDK context into the typed settings
(config/environments.py) and builds the selected environments; `build_environment` builds and
wires the stacks of one, in a `cdk.Stage` of its own (`iiot-<env>`) pinned to the environment's
account and region. The stacks keep their names (`iiot-<env>-<concern>`); the CLI selects an
environment's stacks by the stage: `cdk deploy 'iiot-dev/*'`.

An environment that is neither pinned nor a sandbox is synthesized environment-agnostic (for
`cdk synth`, `cdk diff` and review) with a CloudFormation rule in every stack that fails the
deployment before any resource changes, naming the two context keys that pin it: it never
lands in whatever account the CLI profile happens to name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aws_cdk import (
    App,
    CfnParameter,
    CfnRule,
    CfnRuleAssertion,
    Fn,
    Stack,
    Stage,
    Tags,
    Validations,
)
from aws_cdk import Environment as CdkEnvironment
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from config.environments import (
    ArtifactPins,
    ConfigError,
    Environment,
    artifact_pins,
    environments,
)
from stacks.alerting_stack import AlertingStack
from stacks.artifacts import ROOT
from stacks.edge_stack import EdgeStack
from stacks.grafana_stack import DashboardSources, GrafanaStack
from stacks.ingestion_stack import IngestionStack
from stacks.iot_stack import IotStack
from stacks.lake_stack import LakeStack
from stacks.ml_stack import MlStack
from stacks.monitoring_stack import Monitored, MonitoringStack
from stacks.network_stack import NetworkStack
from stacks.smoke_stack import SmokeStack
from stacks.streaming_stack import StreamingStack
from stacks.timeseries_stack import BUCKET as INFLUX_BUCKET
from stacks.timeseries_stack import ORGANIZATION as INFLUX_ORG
from stacks.timeseries_stack import TimeSeriesStack
from stacks.warehouse_stack import WarehouseStack

CDK_JSON = ROOT / "cdk.json"
S = TypeVar("S", bound=Stack)


def feature_flags(cdk_json: Path = CDK_JSON) -> dict[str, Any]:
    """cdk.json's context (feature flags, and deployment inputs committed there), so
    `python app.py` builds what `cdk synth` does."""
    context: dict[str, Any] = json.loads(cdk_json.read_text())["context"]
    return context


def build_app(app: App, names: list[str] | None = None) -> dict[str, EnvironmentStacks]:
    """Every selected environment's stacks (default: all), checked by cdk-nag AwsSolutions.

    The environments' deployment inputs come from the app's CDK context (`-c prod:alarm_email=
    ...` or cdk.json); raises ConfigError for an unknown environment or an invalid setting.
    """
    context = app.node.get_all_context()
    configs = environments(context)
    pins = artifact_pins(context)
    unknown = sorted(set(names or []) - set(configs))
    if unknown:
        raise ConfigError(f"unknown environment {unknown}: choose from {', '.join(configs)}")
    built = {
        name: build_environment(app, configs[name], pins=pins) for name in names or list(configs)
    }
    # Registered on the app, the checks cover every stage's stacks.
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return built


@dataclass
class EnvironmentStacks:
    """The stage of one environment and its stacks, by concern."""

    stage: Stage
    stacks: dict[str, Stack] = field(default_factory=dict)


def build_environment(
    scope: Construct,
    env_config: Environment,
    *,
    pins: ArtifactPins,
    toolchain_account: str | None = None,
) -> EnvironmentStacks:
    """The stage `iiot-<env>` in `scope` with the environment's stacks, named
    `iiot-<env>-<concern>` and wired. `toolchain_account`: the delivery pipeline's account,
    trusted to assume the smoke tests' role (stacks/pipeline_stack.py)."""
    stage = environment_stage(scope, env_config)
    prefix = env_config.prefix
    built = EnvironmentStacks(stage=stage)

    def add(stack_class: type[S], concern: str, summary: str, **wiring: Any) -> S:
        """The concern's stack `iiot-<env>-<concern>`, tagged; it takes the stage's account
        and region, and refuses to deploy while the environment is unpinned."""
        stack = stack_class(
            stage,
            concern,
            stack_name=f"{prefix}-{concern}",
            env=None,
            env_config=env_config,
            description=f"IIoT platform ({env_config.name}): {summary}",
            **wiring,
        )
        Tags.of(stack).add("project", "iiot-platform")
        Tags.of(stack).add("environment", env_config.name)
        Tags.of(stack).add("concern", concern)
        if not env_config.pinned and not env_config.sandbox:
            refuse_to_deploy_unpinned(stack, env_config)
        built.stacks[concern] = stack
        return stack

    network = add(
        NetworkStack,
        "network",
        "VPC for the private data stores",
    )
    lake = add(
        LakeStack,
        "lake",
        "Delta Lake buckets, Glue catalog, EMR Serverless runs",
        pins=pins,
    )
    ingestion = add(
        IngestionStack,
        "ingestion",
        "telemetry stream and Firehose to bronze",
        lake_key=lake.key,
    )
    ingestion.add_stack_dependency(lake, "Firehose writes to the bronze bucket")
    alerting = add(
        AlertingStack,
        "alerting",
        "anomaly stream, alert topic and router",
    )
    iot = add(
        IotStack,
        "iot",
        "IoT Core things, policy, token exchange and rules",
        telemetry=ingestion.telemetry,
        anomalies=alerting.anomalies,
    )
    streaming = add(
        StreamingStack,
        "streaming",
        "Flink SQL stream rules (Managed Service for Apache Flink)",
        telemetry=ingestion.telemetry,
        anomalies=alerting.anomalies,
        lake_key=lake.key,
        pins=pins,
    )
    warehouse = add(
        WarehouseStack,
        "warehouse",
        "Redshift Serverless with Spectrum over the lake",
        vpc=network.vpc,
        subnets=network.data_subnets,
        lake_key=lake.key,
        lake_paths=("silver/", "gold/"),
        glue_database=lake.database_name,
    )
    timeseries = add(
        TimeSeriesStack,
        "timeseries",
        "Timestream for InfluxDB and its writer",
        vpc=network.vpc,
        subnets=network.data_subnets,
        telemetry=ingestion.telemetry,
        logs_bucket=lake.logs,
    )
    add(
        GrafanaStack,
        "grafana",
        "Managed Grafana dashboards over InfluxDB and the warehouse",
        vpc=network.vpc,
        subnets=network.data_subnets,
        sources=DashboardSources(
            influx_url=timeseries.url,
            influx_security_group=timeseries.security_group,
            influx_admin_secret=timeseries.credentials,
            influx_admin_secret_key=timeseries.key,
            warehouse=warehouse.workgroup,
        ),
    )

    ml = add(
        MlStack,
        "ml",
        "model registry, training pipeline, model publishing",
        lake_key=lake.key,
        token_exchange_role=iot.token_exchange_role,
        lake_run=lake.job_runner.state_machine,
    )
    ml.add_stack_dependency(lake, "the pipeline reads the lake and writes artifacts")
    add(
        EdgeStack,
        "edge",
        "Greengrass component versions and factory deployments",
        thing_group_arns={f: group.attr_arn for f, group in iot.thing_groups.items()},
        token_exchange_role=iot.token_exchange_role,
    )

    functions = {"AlertRouter": alerting.router, "InfluxWriter": timeseries.writer}
    add(
        MonitoringStack,
        "monitoring",
        "alarms and dashboard",
        monitored=Monitored(
            telemetry=ingestion.telemetry,
            anomalies=alerting.anomalies,
            delivery_stream_name=ingestion.delivery_stream_name,
            functions=functions,
            flink_application_name=streaming.application_name,
            flink_consumer_name=streaming.consumer_name,
            flink_dead_letters=streaming.dead_letters,
            lake_run=lake.job_runner.state_machine,
            pipeline_name=ml.pipeline.pipeline_name,
        ),
    )
    add(
        SmokeStack,
        "smoke",
        "outputs and role of the post-deploy smoke tests (iiot smoke)",
        lake_state_machine=lake.job_runner.state_machine,
        lake_key=lake.key,
        vpc=network.vpc,
        subnets=network.data_subnets,
        influx_url=timeseries.url,
        influx_security_group=timeseries.security_group,
        influx_secret=timeseries.credentials,
        influx_org=INFLUX_ORG,
        influx_bucket=INFLUX_BUCKET,
        training_pipeline_name=ml.pipeline.pipeline_name,
        toolchain_account=toolchain_account,
    )
    return built


def environment_stage(scope: Construct, env_config: Environment) -> Stage:
    """The environment's `cdk.Stage` (`iiot-<env>`): its stacks take its account and region,
    the pinned ones or, unpinned, none (environment-agnostic)."""
    return Stage(
        scope,
        env_config.prefix,
        env=CdkEnvironment(account=env_config.account, region=env_config.region)
        if env_config.pinned
        else None,
    )


def refuse_to_deploy_unpinned(stack: Stack, env_config: Environment) -> None:
    """A rule that fails the stack's deployment (CloudFormation evaluates rules before any
    resource changes) until the environment names its account and region."""
    name = env_config.name
    pin = (
        f"{env_config.prefix} deploys only to its own account and region: give them as CDK "
        f"context {name}:account and {name}:region (cdk.json or -c)"
    )
    guard = CfnParameter(
        stack,
        "EnvironmentPinned",
        type="String",
        default="no",
        allowed_values=["no", "yes"],
        description=f"Whether {env_config.prefix} was pinned to its account; {pin}",
    )
    CfnRule(
        stack,
        "EnvironmentIsPinned",
        assertions=[
            CfnRuleAssertion(
                assert_=Fn.condition_equals(guard.value_as_string, "yes"),
                assert_description=pin,
            )
        ],
    )
