"""Hot time series: Amazon Timestream for InfluxDB in the private subnets, its admin
credentials in Secrets Manager, and the Lambda that writes the telemetry stream into it."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_timestream as timestream
from constructs import Construct

from config.environments import Environment
from stacks import artifacts
from stacks.constructs.access import acknowledge
from stacks.constructs.dead_letters import dead_letter_queue
from stacks.constructs.python_function import PythonFunction

INFLUX_PORT = 8086
ORGANIZATION = "iiot"
BUCKET = "telemetry"
ADMIN_USER = "iiot-admin"


class TimeSeriesStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        telemetry: kinesis.IStream,
        readings: kinesis.IStream,
        logs_bucket: s3.IBucket,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = env_config.prefix
        self.key = kms.Key(
            self,
            "TimeSeriesKey",
            alias=f"alias/{prefix}-timeseries",
            description="Encrypts the InfluxDB credentials and the writer's dead letters",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.credentials = secretsmanager.Secret(
            self,
            "InfluxCredentials",
            description="Timestream for InfluxDB admin user (the writer signs in with it)",
            encryption_key=self.key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=(
                    f'{{"username": "{ADMIN_USER}", "organization": "{ORGANIZATION}", '
                    f'"bucket": "{BUCKET}"}}'
                ),
                generate_string_key="password",
                exclude_punctuation=True,
                password_length=32,
            ),
        )
        acknowledge(
            self.credentials,
            "Timestream for InfluxDB sets the admin password only when the instance is "
            "created and has no managed rotation; rotating it means changing it in InfluxDB "
            "and updating this secret (README, Deploy: rotating the InfluxDB password).",
            "AwsSolutions-SMG4",
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "InfluxSecurityGroup",
            vpc=vpc,
            description="Timestream for InfluxDB: the InfluxDB API from inside the VPC",
            allow_all_outbound=False,
        )
        subnet_ids = vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids
        self.instance = timestream.CfnInfluxDBInstance(
            self,
            "Influx",
            name=f"{prefix}-influx",
            db_instance_type=env_config.influx_instance_type,
            db_storage_type="InfluxIOIncludedT1",
            allocated_storage=env_config.influx_storage_gib,
            deployment_type="WITH_MULTIAZ_STANDBY" if env_config.influx_multi_az else "SINGLE_AZ",
            publicly_accessible=False,
            port=INFLUX_PORT,
            username=ADMIN_USER,
            password=self.credentials.secret_value_from_json("password").unsafe_unwrap(),
            organization=ORGANIZATION,
            bucket=BUCKET,
            vpc_subnet_ids=subnet_ids if env_config.influx_multi_az else [subnet_ids[0]],
            vpc_security_group_ids=[self.security_group.security_group_id],
            log_delivery_configuration=timestream.CfnInfluxDBInstance.LogDeliveryConfigurationProperty(
                s3_configuration=timestream.CfnInfluxDBInstance.S3ConfigurationProperty(
                    bucket_name=logs_bucket.bucket_name, enabled=True
                )
            ),
        )
        self.instance.apply_removal_policy(
            RemovalPolicy.RETAIN if env_config.keep_data_on_delete else RemovalPolicy.DESTROY
        )
        self.writer = self._writer(env_config, vpc, subnets, telemetry, readings)

    def _writer(
        self,
        env_config: Environment,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        telemetry: kinesis.IStream,
        readings: kinesis.IStream,
    ) -> lambda_.Function:
        writer_group = ec2.SecurityGroup(
            self,
            "WriterSecurityGroup",
            vpc=vpc,
            description="InfluxDB writer Lambda: InfluxDB and the AWS API endpoints",
            allow_all_outbound=False,
        )
        writer_group.add_egress_rule(self.security_group, ec2.Port.tcp(INFLUX_PORT), "InfluxDB API")
        writer_group.add_egress_rule(
            ec2.Peer.ipv4(env_config.vpc_cidr), ec2.Port.tcp(443), "AWS APIs via VPC endpoints"
        )
        self.security_group.add_ingress_rule(
            writer_group, ec2.Port.tcp(INFLUX_PORT), "InfluxDB API from the writer Lambda"
        )
        # Powertools idempotency records keyed on the batch id (default attribute names).
        idempotency = dynamodb.Table(
            self,
            "Idempotency",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute="expiration",
            removal_policy=RemovalPolicy.DESTROY,
        )
        dead_letters = dead_letter_queue(
            self, "WriterDeadLetters", self.key, sender="the writer (undecodable batches)"
        )
        function = PythonFunction(
            self,
            "InfluxWriter",
            function_dir=artifacts.INFLUX_WRITER.require().parent,
            description="Writes telemetry batches from Kinesis into Timestream for InfluxDB",
            environment={
                "INFLUXDB_URL": f"https://{self.instance.attr_endpoint}:{INFLUX_PORT}",
                "INFLUXDB_SECRET_ARN": self.credentials.secret_arn,
                "INFLUXDB_ORG": ORGANIZATION,
                "INFLUXDB_BUCKET": BUCKET,
                "IDEMPOTENCY_TABLE": idempotency.table_name,
                "DEAD_LETTER_QUEUE_URL": dead_letters.queue_url,
                # Accepted readings go on as JSON rows to the stream the Flink rules read.
                "READINGS_STREAM_NAME": readings.stream_name,
                "POWERTOOLS_SERVICE_NAME": "influx-writer",
                "POWERTOOLS_METRICS_NAMESPACE": "IIoT",
                "IIOT_ENVIRONMENT": env_config.name,
            },
            log_retention_days=env_config.log_retention_days,
            timeout=Duration.seconds(60),
            memory_size=512,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[writer_group],
        )
        writer = function.function
        self.credentials.grant_read(writer)
        idempotency.grant_read_write_data(writer)
        dead_letters.grant_send_messages(writer)
        readings.grant_write(writer)
        writer.add_event_source(
            sources.KinesisEventSource(
                telemetry,
                starting_position=lambda_.StartingPosition.LATEST,
                batch_size=100,
                max_batching_window=Duration.seconds(1),
                parallelization_factor=2,
                bisect_batch_on_error=True,
                retry_attempts=3,
                report_batch_item_failures=True,
                on_failure=sources.SqsDlq(dead_letters),
            )
        )
        self.writer_dead_letters = dead_letters
        acknowledge(
            function.role,
            "X-Ray PutTraceSegments/PutTelemetryRecords (active tracing) and the VPC network "
            "interface actions (ec2:CreateNetworkInterface etc.) do not support resource-level "
            "permissions.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            function.role,
            "CDK's grants for the KMS-encrypted secret, table and queue: envelope encryption "
            "needs GenerateDataKey*/ReEncrypt* variants, and the statement is limited to the "
            "time-series stack's own key.",
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
        )
        return writer
