"""Streaming rules: the Flink SQL of kda_sql/ on Amazon Managed Service for Apache Flink.

The application package is `kda_sql/runner.py` + the rendered `kda_sql/sql/*.sql` (a PyFlink
application), reading the decoded readings stream and writing anomalies to the anomaly stream, which
the alert router reads. The rules' parameters are the runner's `StreamRules` property group.

Connector: the Kinesis SQL connector for Flink 1.20,
    org.apache.flink:flink-sql-connector-kinesis:5.0.0-1.20
is a Maven artifact, which the machine that synthesizes cannot fetch. The package is therefore
assembled in the cloud while the stack deploys: deploy-time-build runs a CodeBuild job (its
NodejsBuild construct, which runs any shell commands; Maven is on CodeBuild's standard image)
that fetches the jar with Maven (checksums enforced), refuses it unless its SHA-256 is the
pinned one (CDK context `pins:flink_connector_sha256`,
config/environments.py: ArtifactPins), adds it as lib/<jar> next to the code and writes
`application.zip` under a content-addressed key of the artifacts bucket. The application is
created only after that job has succeeded, and names the jar in its `jarfile` run option.

Nothing in CloudFormation starts a Managed Flink application: a custom resource starts it once
it and its logging option exist, again after every change of the package (restoring from the
latest snapshot), and leaves a running application alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kinesisanalyticsv2 as flink
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import custom_resources as cr
from cdklabs.deploy_time_build import AssetConfig, NodejsBuild
from constructs import Construct

from config.environments import ArtifactPins, Environment
from kda_sql.flink_env import FLINK_VERSION, managed_flink_runtime
from stacks import artifacts
from stacks.constructs.access import AWS_CUSTOM_RESOURCE_SINGLETON, acknowledge, bucket_name
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


def stage_code() -> tuple[Path, str]:
    """kda_sql/runner.py and kda_sql/sql/ staged under cdk.out, and their content hash."""
    runner = artifacts.FLINK_SQL.require()
    copies = [(runner, "kda_sql"), (runner.parent / "sql", "kda_sql")]
    content_hash = source_hash(copies, [])
    bundling = LocalPythonBundling(copies=copies, requirements=[], platform="", python_version="")
    return staged_once(BUNDLE_CACHE / f"flink-{content_hash[:24]}", bundling.bundle), content_hash


class StreamingStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        readings: kinesis.IStream,
        anomalies: kinesis.IStream,
        lake_key: kms.IKey,
        pins: ArtifactPins,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = env_config.prefix
        package = self._package(prefix, lake_key, pins)
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        log_stream = log_group.add_stream("Application")
        role = iam.Role(
            self,
            "ApplicationRole",
            assumed_by=iam.ServicePrincipal("kinesisanalytics.amazonaws.com"),
            description="Stream rules: read readings, write anomalies, read the code package",
        )
        readings.grant_read(role)
        anomalies.grant_write(role)
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
        run_options = {"python": "kda_sql/runner.py", "jarfile": f"lib/{CONNECTOR_JAR}"}
        rules = {
            "parallelism": str(env_config.flink_parallelism),
            "source.connector": "kinesis",
            "source.stream.arn": readings.stream_arn,
            "source.aws.region": self.region,
            "source.source.init.position": "LATEST",
            "source.format": "json",
            "source.json.ignore-parse-errors": "true",
            "sink.connector": "kinesis",
            "sink.stream.arn": anomalies.stream_arn,
            "sink.aws.region": self.region,
            "sink.format": "json",
        }
        self.application_name = f"{prefix}-stream-rules"
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

    def _package(self, prefix: str, lake_key: kms.IKey, pins: ArtifactPins) -> Package:
        sha256 = pins.require_flink_connector_sha256(CONNECTOR_COORDINATES, CONNECTOR_JAR)
        code, content_hash = stage_code()
        key_prefix = f"{PACKAGE_PREFIX}{content_hash[:24]}/"
        artifacts_bucket = s3.Bucket.from_bucket_attributes(
            self,
            "ArtifactsBucket",
            bucket_name=bucket_name(prefix, "artifacts"),
            encryption_key=lake_key,
        )
        build = NodejsBuild(
            self,
            "ApplicationPackage",
            assets=[AssetConfig(path=str(code), extract_path="app")],
            destination_bucket=artifacts_bucket,
            destination_key_prefix=key_prefix,
            nodejs_version=22,  # the build image's runtime; nothing here runs Node.js
            build_commands=[
                *fetch_connector(sha256),
                "mkdir -p ../package",
                "zip -qr ../package/application.zip kda_sql lib",
            ],
            output_source_directory="../package",
        )
        project = build.node.find_child("Project")
        acknowledge_build_project(
            project,
            "deploy-time-build's package job fetches the connector with Maven (SHA-256 "
            "pinned) and writes "
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
