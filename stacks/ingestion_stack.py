"""Telemetry ingestion: the Kinesis stream that gateways' batches land in, and Firehose
delivering the raw batches to the bronze bucket.

The stream's shards come from the environment's workload (config/environments.py:
size_stream: records, bytes in, and bytes out to its two polling consumers, Firehose and the
InfluxDB writer). Its third consumer, the Flink stream rules, reads the same compact batches
through an enhanced fan-out consumer of its own (stacks/streaming_stack.py), so no second,
per-reading stream exists."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kinesisfirehose as firehose
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from config.environments import Environment
from stacks.constructs.access import acknowledge, bucket_name, data_removal_policy, grant_bucket
from stacks.constructs.python_function import log_retention

# Raw batches land under the lake's landing/ prefix, where the bronze job reads them
# (spark_jobs/io.py). Compact batches carry their own length (iiot/wire.py header), so the
# records Firehose concatenates into one object split back without a delimiter. They are
# zstd-compressed by the gateway already, so Firehose adds no compression of its own (GZIP
# would gain nothing on compressed bytes and the bronze job reads the batches as landed).
# Factory ids are inside the compressed body: landing is partitioned by arrival date and
# hour, silver by event date and factory. Failed records go outside landing/.
LANDING_PREFIX = "landing/date=!{timestamp:yyyy-MM-dd}/hour=!{timestamp:HH}/"
ERROR_PREFIX = "firehose-errors/!{firehose:error-output-type}/date=!{timestamp:yyyy-MM-dd}/"


class IngestionStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        lake_key: kms.IKey,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = env_config.prefix
        shards = env_config.kinesis_shards()
        # Streams have fixed names: kept where data is kept (prod), else deleted with the stack
        # so that destroy followed by deploy works (CDK's default would retain them).
        removal = data_removal_policy(env_config)
        self.telemetry = kinesis.Stream(
            self,
            "Telemetry",
            stream_name=f"{prefix}-telemetry",
            stream_mode=kinesis.StreamMode.ON_DEMAND
            if shards is None
            else kinesis.StreamMode.PROVISIONED,
            shard_count=shards,
            retention_period=Duration.hours(env_config.kinesis_retention_hours),
            encryption=kinesis.StreamEncryption.MANAGED,
            removal_policy=removal,
        )
        delivery_logs = logs.LogGroup(
            self,
            "DeliveryLogs",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        delivery_log_stream = delivery_logs.add_stream("S3Delivery")
        role = iam.Role(
            self,
            "DeliveryRole",
            assumed_by=iam.ServicePrincipal("firehose.amazonaws.com"),
            description="Firehose: read the telemetry stream, write bronze, log failures",
        )
        self.telemetry.grant_read(role)
        delivery_logs.grant_write(role)
        for path in ("landing/", "firehose-errors/"):
            grant_bucket(
                role,
                role,
                prefix=prefix,
                layer="lake",
                path=path,
                write=True,
                key=lake_key,
                why="Firehose writes date-partitioned batch files and failed records",
            )
        self.to_bronze = firehose.CfnDeliveryStream(
            self,
            "ToBronze",
            delivery_stream_name=f"{prefix}-telemetry-to-bronze",
            delivery_stream_type="KinesisStreamAsSource",
            kinesis_stream_source_configuration=firehose.CfnDeliveryStream.KinesisStreamSourceConfigurationProperty(
                kinesis_stream_arn=self.telemetry.stream_arn, role_arn=role.role_arn
            ),
            extended_s3_destination_configuration=firehose.CfnDeliveryStream.ExtendedS3DestinationConfigurationProperty(
                bucket_arn=self.format_arn(
                    service="s3", region="", account="", resource=bucket_name(prefix, "lake")
                ),
                role_arn=role.role_arn,
                prefix=LANDING_PREFIX,
                error_output_prefix=ERROR_PREFIX,
                compression_format="UNCOMPRESSED",
                buffering_hints=firehose.CfnDeliveryStream.BufferingHintsProperty(
                    interval_in_seconds=300, size_in_m_bs=128
                ),
                encryption_configuration=firehose.CfnDeliveryStream.EncryptionConfigurationProperty(
                    kms_encryption_config=firehose.CfnDeliveryStream.KMSEncryptionConfigProperty(
                        awskms_key_arn=lake_key.key_arn
                    )
                ),
                cloud_watch_logging_options=firehose.CfnDeliveryStream.CloudWatchLoggingOptionsProperty(
                    enabled=True,
                    log_group_name=delivery_logs.log_group_name,
                    log_stream_name=delivery_log_stream.log_stream_name,
                ),
            ),
        )
        # The role's policy must exist before Firehose validates it on creation.
        self.to_bronze.node.add_dependency(role.node.find_child("DefaultPolicy"))
        acknowledge(
            self.to_bronze,
            "A delivery stream whose source is a Kinesis stream cannot enable its own "
            "server-side encryption: data is encrypted in the source stream (AWS-managed key) "
            "and in S3 with the lake's KMS key (ExtendedS3 EncryptionConfiguration).",
            "AwsSolutions-KDF1",
        )
        self.delivery_stream_name = f"{prefix}-telemetry-to-bronze"
