"""Streaming rules: the Flink SQL of kda_sql/ on Amazon Managed Service for Apache Flink.

The application package is `kda_sql/runner.py` + the rendered `kda_sql/sql/*.sql` (a PyFlink
application). It reads the gateways' compact batches straight from the telemetry stream and
decodes them in the source (`'format' = 'iiot-batch'`, kda_sql/decoder), writes anomalies to the
anomaly stream, which the alert router reads, and the records the decoder refuses (poison
batches) to its own dead-letter stream. The rules' parameters are the runner's `StreamRules`
property group.

The rules are one of the telemetry stream's three independent consumers: Firehose (to bronze)
and the InfluxDB writer poll it; Flink reads through an enhanced fan-out consumer registered
here (`iiot-<env>-stream-rules`, self-managed: CloudFormation registers it, the job only
describes and subscribes), with 2 MB/s per shard of its own. An InfluxDB outage or a retried
writer batch therefore neither starves nor duplicates the rules' input; the retired per-reading
`readings` stream (one JSON record per reading, 77 % of prod's bill) is gone.

Jars: the Kinesis SQL connector for Flink 1.20,
    org.apache.flink:flink-sql-connector-kinesis:5.0.0-1.20
is a Maven artifact, which the machine that synthesizes cannot fetch; the decoder is compiled at
synth (`kda_sql.decoder.build.build_jar`, javac against `.venv-flink`'s Flink jars, the same
Flink version; a missing JDK or PyFlink fails the synth). A Managed Flink Python application
names one `jarfile`, so the package is assembled in the cloud while the stack deploys:
deploy-time-build runs a CodeBuild job (its NodejsBuild construct, which runs any shell
commands; Maven and Python are on CodeBuild's standard image) that fetches the connector with
Maven (checksums enforced), refuses it unless its SHA-256 is the pinned one (CDK context
`pins:flink_connector_sha256`, config/environments.py: ArtifactPins), merges it with the
decoder jar into lib/iiot-flink-rules.jar (`merge_jars`: the table-factory service files of
both are kept) and writes `application.zip` under a content-addressed key of the artifacts
bucket. The application is created only after that job has succeeded.

Sizing: the parallelism (and so the KPUs) is the environment's, from its workload and the
measured per-slot throughput (config/environments.py: size_stream).

Calibrated rules: when the environment names a rapid-change calibration (context
`<env>:stream_calibration`, the JSON `iiot stream calibrate` writes), the package carries the
catalog's rules rendered with its per-series windows and limits (kda_sql.generate.render);
otherwise the checked-in kda_sql/sql with the catalog's limits. A named file that is missing or
invalid fails the synth (config/environments.py validates it).

Nothing in CloudFormation starts a Managed Flink application: a custom resource starts it once
it and its logging option exist, again after every change of the package (restoring from the
latest snapshot), and leaves a running application alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kinesisanalyticsv2 as flink
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import custom_resources as cr
from cdklabs.deploy_time_build import AssetConfig, NodejsBuild
from constructs import Construct

from config.environments import METRICS_CATALOG, ArtifactPins, ConfigError, Environment
from iiot.catalog import load_catalog
from kda_sql.calibration import Calibration
from kda_sql.decoder.build import FORMAT_IDENTIFIER, build_jar, flink_lib_jars
from kda_sql.flink_env import FLINK_VERSION, managed_flink_runtime
from kda_sql.generate import render
from stacks import artifacts
from stacks.constructs.access import (
    AWS_CUSTOM_RESOURCE_SINGLETON,
    acknowledge,
    bucket_name,
    data_removal_policy,
)
from stacks.constructs.deploy_time_image import (
    acknowledge_build_project,
    acknowledge_deploy_time_build,
)
from stacks.constructs.python_bundle import (
    BUNDLE_CACHE,
    LocalPythonBundling,
    source_hash,
    staged_once,
)
from stacks.constructs.python_function import log_retention

# The Flink version is named once (kda_sql/flink_env.py), for this runtime, the connector built
# for it and the local PyFlink the tests run.
RUNTIME = managed_flink_runtime(FLINK_VERSION)
CONNECTOR_GROUP, CONNECTOR_ARTIFACT, CONNECTOR_VERSION = (
    "org.apache.flink",
    "flink-sql-connector-kinesis",
    f"5.0.0-{FLINK_VERSION}",
)
CONNECTOR_COORDINATES = f"{CONNECTOR_GROUP}:{CONNECTOR_ARTIFACT}:{CONNECTOR_VERSION}"
CONNECTOR_JAR = f"{CONNECTOR_ARTIFACT}-{CONNECTOR_VERSION}.jar"
# Maven's own copy goal (pinned), run in the package folder; it fails on a checksum mismatch.
FETCH_CONNECTOR = (
    "mvn --batch-mode --quiet --strict-checksums "
    "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy "
    f"-Dartifact={CONNECTOR_COORDINATES} -DoutputDirectory=lib"
)


def fetch_connector(sha256: str) -> list[str]:
    """Shell commands (run in the package folder) that put the connector in lib/ and fail the
    build unless its SHA-256 is `sha256`."""
    return [
        FETCH_CONNECTOR,
        f'echo "{sha256}  lib/{CONNECTOR_JAR}" | sha256sum --check --strict -',
    ]


# The one jar the application names: the connector and the decoder merged at deploy time.
RULES_JAR = "iiot-flink-rules.jar"
# The decoder jar in the staged package, under a fixed name (build_jar's name carries a digest
# of the sources and the compiler, which the package's content hash covers through its bytes).
DECODER_JAR = "iiot-flink-decoder.jar"
# The decoder's merge function, staged into the package's build folder (not shipped).
MERGE_TOOL = "tools"


# The shell command (run in the package folder) that merges the connector and the decoder into
# lib/RULES_JAR with kda_sql/decoder/build.py's merge_jars, and removes the inputs.
MERGE_JARS = (
    f"python3 -c \"import sys; sys.path.insert(0, '{MERGE_TOOL}'); from pathlib import Path; "
    "from build import merge_jars; "
    f"merge_jars(Path('lib/{RULES_JAR}'), "
    f"[Path('lib/{CONNECTOR_JAR}'), Path('lib/{DECODER_JAR}')])\""
    f" && rm lib/{CONNECTOR_JAR} lib/{DECODER_JAR}"
)


PACKAGE_PREFIX = "flink/"
# The write half of CDK's bucket and key grants, as cdk-nag names them.
WRITE_WILDCARDS = ("s3:Abort*", "s3:DeleteObject*", "kms:GenerateDataKey*", "kms:ReEncrypt*")
RUN_OPTIONS = "kinesis.analytics.flink.run.options"
RULES_GROUP = "StreamRules"  # kda_sql/runner.py: PROPERTY_GROUP


@dataclass(frozen=True)
class Package:
    """Where the application package is, and the build that writes it."""

    bucket_arn: str
    key: str
    build: NodejsBuild


@dataclass(frozen=True)
class StagedCode:
    """The package's inputs staged under cdk.out: runner, SQL, decoder jar, merge tool."""

    directory: Path
    content_hash: str


def load_calibration(env_config: Environment) -> Calibration | None:
    """The environment's rapid-change calibration (`<env>:stream_calibration`), or None: the
    rules keep the catalog's limits. ConfigError (the synth fails) when the file is invalid."""
    if env_config.stream_calibration is None:
        return None
    try:
        return Calibration.load(env_config.stream_calibration)
    except ValueError as error:
        raise ConfigError(
            f"environment {env_config.name}: stream_calibration (context "
            f"{env_config.name}:stream_calibration): {error}"
        ) from error


def rendered_sql(calibration: Calibration | None) -> Path:
    """The rules' SQL folder: the checked-in kda_sql/sql (the catalog's limits), or, with a
    calibration, the catalog's rules rendered with its per-series windows and limits (staged
    under cdk.out by content)."""
    sql = artifacts.FLINK_SQL.require().parent / "sql"
    if calibration is None:
        return sql
    rendered = render(load_catalog(METRICS_CATALOG), calibration)
    digest = hashlib.sha256(json.dumps(rendered, sort_keys=True).encode()).hexdigest()

    def write(out: Path) -> None:
        (out / "sql").mkdir(parents=True)
        for name, text in rendered.items():
            (out / "sql" / name).write_text(text)

    return staged_once(BUNDLE_CACHE / f"flink-sql-{digest[:24]}", write) / "sql"


def stage_code(calibration: Calibration | None = None) -> StagedCode:
    """kda_sql/runner.py, the rules' SQL (rendered_sql), the decoder jar (built here against
    the local Flink jars; DecoderBuildError if there is no JDK or PyFlink) and the merge tool,
    staged under cdk.out, with their content hash."""
    runner = artifacts.FLINK_SQL.require()
    built = build_jar(BUNDLE_CACHE / "flink-decoder", flink_lib_jars())

    def rename(out: Path) -> None:
        out.mkdir(parents=True)
        shutil.copyfile(built, out / DECODER_JAR)

    decoder = staged_once(BUNDLE_CACHE / "flink-decoder" / built.stem, rename) / DECODER_JAR
    merge_tool = runner.parent / "decoder" / "build.py"
    copies = [
        (runner, "kda_sql"),
        (rendered_sql(calibration), "kda_sql"),
        (decoder, "lib"),
        (merge_tool, MERGE_TOOL),
    ]
    content_hash = source_hash(copies, [])
    bundling = LocalPythonBundling(copies=copies, requirements=[], platform="", python_version="")
    directory = staged_once(BUNDLE_CACHE / f"flink-{content_hash[:24]}", bundling.bundle)
    return StagedCode(directory=directory, content_hash=content_hash)


class StreamingStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        telemetry: kinesis.IStream,
        anomalies: kinesis.IStream,
        lake_key: kms.IKey,
        pins: ArtifactPins,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = env_config.prefix
        package = self._package(prefix, lake_key, pins, load_calibration(env_config))
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        log_stream = log_group.add_stream("Application")
        self.application_name = f"{prefix}-stream-rules"
        # The rules' own enhanced fan-out consumer of the telemetry stream (self-managed: its
        # life is the stack's, not the job's, so the role needs no Register/Deregister).
        self.consumer = kinesis.CfnStreamConsumer(
            self,
            "RulesConsumer",
            consumer_name=self.application_name,
            stream_arn=telemetry.stream_arn,
        )
        self.consumer_name = self.application_name
        # Poison batches the decoder refuses, one JSON row each (kda_sql/sql: deadletters):
        # one shard is ample (a refused record is at most its first 64 KiB and a few fields).
        self.dead_letters = kinesis.Stream(
            self,
            "DeadLetters",
            stream_name=f"{prefix}-stream-dead-letters",
            stream_mode=kinesis.StreamMode.PROVISIONED,
            shard_count=1,
            retention_period=Duration.days(7),
            encryption=kinesis.StreamEncryption.MANAGED,
            removal_policy=data_removal_policy(env_config),
        )
        role = iam.Role(
            self,
            "ApplicationRole",
            assumed_by=iam.ServicePrincipal("kinesisanalytics.amazonaws.com"),
            description="Stream rules: read telemetry (EFO), write anomalies and dead letters, "
            "read the code package",
        )
        # Enhanced fan-out, exactly: the source lists the shards and describes the stream,
        # then describes its consumer and subscribes to each shard through it; no polling.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["kinesis:DescribeStreamSummary", "kinesis:ListShards"],
                resources=[telemetry.stream_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard"],
                resources=[self.consumer.attr_consumer_arn],
            )
        )
        anomalies.grant_write(role)
        self.dead_letters.grant_write(role)
        log_group.grant_write(role)
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[f"{package.bucket_arn}/{package.key}"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["kms:Decrypt"], resources=[lake_key.key_arn])
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:DescribeLogGroups", "logs:DescribeLogStreams"],
                resources=[log_group.log_group_arn],
            )
        )
        run_options = {"python": "kda_sql/runner.py", "jarfile": f"lib/{RULES_JAR}"}
        rules = {
            "parallelism": str(env_config.flink_parallelism),
            # The connector's options, under the runner's `source.` prefix.
            "source.connector": "kinesis",
            "source.stream.arn": telemetry.stream_arn,
            "source.aws.region": self.region,
            "source.source.init.position": "LATEST",
            "source.source.reader.type": "EFO",
            "source.source.efo.consumer.name": self.consumer_name,
            "source.source.efo.lifecycle": "SELF_MANAGED",
            "source.format": FORMAT_IDENTIFIER,  # raw compact batches, decoded in the source
            "sink.connector": "kinesis",
            "sink.stream.arn": anomalies.stream_arn,
            "sink.aws.region": self.region,
            "sink.format": "json",
            "deadletter.connector": "kinesis",
            "deadletter.stream.arn": self.dead_letters.stream_arn,
            "deadletter.aws.region": self.region,
            "deadletter.format": "json",
        }
        application = flink.CfnApplication(
            self,
            "StreamRules",
            application_name=self.application_name,
            application_description="Flink SQL rules from the metric catalog (kda_sql/)",
            runtime_environment=RUNTIME,
            service_execution_role=role.role_arn,
            application_configuration=flink.CfnApplication.ApplicationConfigurationProperty(
                application_code_configuration=flink.CfnApplication.ApplicationCodeConfigurationProperty(
                    code_content_type="ZIPFILE",
                    code_content=flink.CfnApplication.CodeContentProperty(
                        s3_content_location=flink.CfnApplication.S3ContentLocationProperty(
                            bucket_arn=package.bucket_arn, file_key=package.key
                        )
                    ),
                ),
                environment_properties=flink.CfnApplication.EnvironmentPropertiesProperty(
                    property_groups=[
                        flink.CfnApplication.PropertyGroupProperty(
                            property_group_id=RUN_OPTIONS, property_map=run_options
                        ),
                        flink.CfnApplication.PropertyGroupProperty(
                            property_group_id=RULES_GROUP, property_map=rules
                        ),
                    ]
                ),
                flink_application_configuration=flink.CfnApplication.FlinkApplicationConfigurationProperty(
                    checkpoint_configuration=flink.CfnApplication.CheckpointConfigurationProperty(
                        configuration_type="DEFAULT"
                    ),
                    monitoring_configuration=flink.CfnApplication.MonitoringConfigurationProperty(
                        configuration_type="CUSTOM", log_level="INFO", metrics_level="APPLICATION"
                    ),
                    parallelism_configuration=flink.CfnApplication.ParallelismConfigurationProperty(
                        configuration_type="CUSTOM",
                        parallelism=env_config.flink_parallelism,
                        parallelism_per_kpu=env_config.flink_parallelism_per_kpu,
                        auto_scaling_enabled=env_config.flink_autoscaling,  # off in dev
                    ),
                ),
                application_snapshot_configuration=flink.CfnApplication.ApplicationSnapshotConfigurationProperty(
                    snapshots_enabled=True
                ),
            ),
        )
        application.node.add_dependency(role, package.build)
        application.add_dependency(self.consumer)
        logging = flink.CfnApplicationCloudWatchLoggingOption(
            self,
            "StreamRulesLogging",
            application_name=self.application_name,
            cloud_watch_logging_option=flink.CfnApplicationCloudWatchLoggingOption.CloudWatchLoggingOptionProperty(
                log_stream_arn=self.format_arn(
                    service="logs",
                    resource="log-group",
                    resource_name=f"{log_group.log_group_name}:log-stream:"
                    f"{log_stream.log_stream_name}",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
            ),
        )
        logging.add_resource_dependency(application)
        self.application = application
        self.starter = self._start(application, logging, package)

    def _start(
        self,
        application: flink.CfnApplication,
        logging: flink.CfnApplicationCloudWatchLoggingOption,
        package: Package,
    ) -> cr.AwsCustomResource:
        """Start the application after it (and its logging option) is created, and again
        after its package changed (the physical id follows the package's key); an already
        running application answers ResourceInUseException, which is not an error here."""
        start = cr.AwsSdkCall(
            service="KinesisAnalyticsV2",
            action="startApplication",
            parameters={
                "ApplicationName": self.application_name,
                "RunConfiguration": {
                    "ApplicationRestoreConfiguration": {
                        "ApplicationRestoreType": "RESTORE_FROM_LATEST_SNAPSHOT"
                    },
                    "FlinkRunConfiguration": {"AllowNonRestoredState": False},
                },
            },
            physical_resource_id=cr.PhysicalResourceId.of(f"{self.application_name}:{package.key}"),
            ignore_error_codes_matching="ResourceInUseException",
        )
        starter = cr.AwsCustomResource(
            self,
            "StartStreamRules",
            on_create=start,
            on_update=start,
            install_latest_aws_sdk=False,
            policy=cr.AwsCustomResourcePolicy.from_statements(
                [
                    iam.PolicyStatement(
                        actions=["kinesisanalytics:StartApplication"],
                        resources=[
                            self.format_arn(
                                service="kinesisanalytics",
                                resource="application",
                                resource_name=self.application_name,
                            )
                        ],
                    )
                ]
            ),
        )
        starter.node.add_dependency(application, logging)
        acknowledge(
            self.node.find_child(AWS_CUSTOM_RESOURCE_SINGLETON),
            "CDK's AwsCustomResource provider function (starts the Flink application after "
            "deployments) uses the AWS managed basic execution role for its logs; it is not "
            "configurable and runs only on deployments.",
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]",
        )
        return starter

    def _package(
        self,
        prefix: str,
        lake_key: kms.IKey,
        pins: ArtifactPins,
        calibration: Calibration | None,
    ) -> Package:
        sha256 = pins.require_flink_connector_sha256(CONNECTOR_COORDINATES, CONNECTOR_JAR)
        code = stage_code(calibration)
        key_prefix = f"{PACKAGE_PREFIX}{code.content_hash[:24]}/"
        artifacts_bucket = s3.Bucket.from_bucket_attributes(
            self,
            "ArtifactsBucket",
            bucket_name=bucket_name(prefix, "artifacts"),
            encryption_key=lake_key,
        )
        build = NodejsBuild(
            self,
            "ApplicationPackage",
            assets=[AssetConfig(path=str(code.directory), extract_path="app")],
            destination_bucket=artifacts_bucket,
            destination_key_prefix=key_prefix,
            nodejs_version=22,  # the build image's runtime; nothing here runs Node.js
            build_commands=[
                *fetch_connector(sha256),
                MERGE_JARS,
                "mkdir -p ../package",
                "zip -qr ../package/application.zip kda_sql lib",
            ],
            output_source_directory="../package",
        )
        project = build.node.find_child("Project")
        acknowledge_build_project(
            project,
            "deploy-time-build's package job fetches the connector with Maven (SHA-256 "
            "pinned), merges it with the decoder jar and writes "
            "application.zip under the content-addressed flink/ prefix of the artifacts "
            "bucket: the library's read/write grant on that one bucket and its KMS key "
            "(with CDK's action wildcards); its only output is that object, stored with "
            "the bucket's default KMS encryption.",
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{prefix}-artifacts-"
            "<AWS::AccountId>-<AWS::Region>/*]",
            *(
                f"AwsSolutions-IAM5[Action::{action}]"
                for action in (
                    "s3:Abort*",
                    "s3:DeleteObject*",
                    "kms:GenerateDataKey*",
                    "kms:ReEncrypt*",
                )
            ),
        )
        acknowledge_deploy_time_build(self)
        return Package(
            bucket_arn=artifacts_bucket.bucket_arn,
            key=f"{key_prefix}application.zip",
            build=build,
        )
