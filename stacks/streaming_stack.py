"""Streaming rules: the Flink SQL of kda_sql/ on Amazon Managed Service for Apache Flink.

The application package is `kda_sql/runner.py` + the rendered `kda_sql/sql/*.sql` (a PyFlink
application), reading the decoded readings stream and writing anomalies to the anomaly stream, which
the alert router reads. The rules' parameters are the runner's `StreamRules` property group.

Connector: the Kinesis SQL connector for Flink 1.20,
    org.apache.flink:flink-sql-connector-kinesis:5.0.0-1.20 (Maven Central)
is a jar that this build cannot download (no Maven here). Point IIOT_FLINK_CONNECTOR_JAR at
the jar when synthesizing for a deployment and it is packaged as lib/<jar> and named in the
`jarfile` run option; without it the synth prints a warning and the application would fail at
its first Kinesis table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aws_cdk import Annotations, ArnFormat, AssetHashType, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kinesisanalyticsv2 as flink
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from config.environments import Environment
from stacks import artifacts
from stacks.artifacts import ROOT
from stacks.constructs.python_bundle import LocalPythonBundling, local_bundling, source_hash
from stacks.constructs.python_function import log_retention

RUNTIME = "FLINK-1_20"
CONNECTOR_COORDINATES = "org.apache.flink:flink-sql-connector-kinesis:5.0.0-1.20"
CONNECTOR_JAR_VARIABLE = "IIOT_FLINK_CONNECTOR_JAR"
RUN_OPTIONS = "kinesis.analytics.flink.run.options"
RULES_GROUP = "StreamRules"  # kda_sql/runner.py: PROPERTY_GROUP


class StreamingStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        readings: kinesis.IStream,
        anomalies: kinesis.IStream,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.application_name: str | None = None
        if not artifacts.FLINK_SQL.present():
            artifacts.FLINK_SQL.report_gap(self, "no stream rules application")
            return
        prefix = env_config.prefix
        jar_path = os.environ.get(CONNECTOR_JAR_VARIABLE)
        jar = Path(jar_path) if jar_path else None
        if jar is not None and not jar.is_file():
            raise FileNotFoundError(f"{CONNECTOR_JAR_VARIABLE}={jar_path}: no such file")
        copies = [
            (ROOT / "kda_sql" / "runner.py", "kda_sql"),
            (ROOT / "kda_sql" / "sql", "kda_sql"),
        ]
        if jar is not None:
            copies.append((jar, "lib"))
        else:
            Annotations.of(self).add_warning_v2(
                "iiot:flink-connector",
                f"the Kinesis SQL connector jar ({CONNECTOR_COORDINATES}) is not packaged: set "
                f"{CONNECTOR_JAR_VARIABLE} to its path before deploying the stream rules",
            )
        code = s3_assets.Asset(
            self,
            "ApplicationCode",
            path=str(ROOT / "kda_sql"),
            asset_hash_type=AssetHashType.CUSTOM,
            asset_hash=source_hash(copies, []),
            bundling=local_bundling(
                LocalPythonBundling(copies=copies, requirements=[], platform="", python_version="")
            ),
        )
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
                resources=[f"{code.bucket.bucket_arn}/{code.s3_object_key}"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:DescribeLogGroups", "logs:DescribeLogStreams"],
                resources=[log_group.log_group_arn],
            )
        )
        run_options = {"python": "kda_sql/runner.py"}
        if jar is not None:
            run_options["jarfile"] = f"lib/{jar.name}"
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
                            bucket_arn=code.bucket.bucket_arn, file_key=code.s3_object_key
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
                        auto_scaling_enabled=True,
                    ),
                ),
                application_snapshot_configuration=flink.CfnApplication.ApplicationSnapshotConfigurationProperty(
                    snapshots_enabled=True
                ),
            ),
        )
        application.node.add_dependency(role)
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
