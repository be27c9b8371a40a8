"""Hot time series: Amazon Timestream for InfluxDB in the private subnets, its admin
credentials in Secrets Manager, and the Lambda that writes the telemetry stream into it (one
of the stream's independent consumers: it forwards nothing; the Flink rules read the stream
themselves).

The bucket keeps `influx_retention_days` of readings (the lake keeps the history): Timestream
creates it without retention and only the InfluxDB API can set one, so a custom resource does
(stacks/constructs/influx_retention_handler.py) once the instance exists and after every change
of the setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_timestream as timestream
from aws_cdk import custom_resources as cr
from constructs import Construct

from config.environments import Environment
from stacks import artifacts
from stacks.constructs.access import (
    acknowledge,
    allow_vpc_network_interfaces,
    data_removal_policy,
)
from stacks.constructs.dead_letters import dead_letter_queue
from stacks.constructs.python_function import (
    ARCHITECTURE,
    RUNTIME,
    PythonFunction,
    log_retention,
)

INFLUX_PORT = 8086
ORGANIZATION = "iiot"
BUCKET = "telemetry"
ADMIN_USER = "iiot-admin"
RETENTION_HANDLER = Path(__file__).parent / "constructs" / "influx_retention_handler.py"


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
            # The instance is retained in prod: so are the secret that signs in to it and the
            # key that decrypts the secret.
            removal_policy=data_removal_policy(env_config),
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
            removal_policy=data_removal_policy(env_config),
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
        self.instance.apply_removal_policy(data_removal_policy(env_config))
        self.url = f"https://{self.instance.attr_endpoint}:{INFLUX_PORT}"
        self.writer = self._writer(env_config, vpc, subnets, telemetry)
        self.retention = self._retention(env_config, vpc, subnets)

    def _client_group(
        self, vpc: ec2.IVpc, env_config: Environment, name: str, what: str, source: str
    ) -> ec2.SecurityGroup:
        """A security group for a function (`what`; `source` in the ingress rule's text) that
        calls the InfluxDB API and the AWS APIs."""
        group = ec2.SecurityGroup(
            self,
            name,
            vpc=vpc,
            description=f"{what}: InfluxDB and the AWS API endpoints",
            allow_all_outbound=False,
        )
        group.add_egress_rule(self.security_group, ec2.Port.tcp(INFLUX_PORT), "InfluxDB API")
        group.add_egress_rule(
            ec2.Peer.ipv4(env_config.vpc_cidr), ec2.Port.tcp(443), "AWS APIs via VPC endpoints"
        )
        self.security_group.add_ingress_rule(
            group, ec2.Port.tcp(INFLUX_PORT), f"InfluxDB API from the {source}"
        )
        return group

    def _retention(
        self, env_config: Environment, vpc: ec2.IVpc, subnets: ec2.SubnetSelection
    ) -> CustomResource:
        """The bucket's retention, set through the InfluxDB API after the instance exists."""
        log_group = logs.LogGroup(
            self,
            "RetentionLogs",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            "RetentionRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Sets the InfluxDB bucket's retention with the admin credentials",
        )
        log_group.grant_write(role)
        self.credentials.grant_read(role)
        allow_vpc_network_interfaces(role)
        acknowledge(
            role,
            "A VPC function's network interface actions have no resource-level permissions; "
            "CDK's secret grant decrypts with the time-series key only.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        handler = lambda_.Function(
            self,
            "RetentionHandler",
            description="Sets the InfluxDB bucket's retention (custom resource)",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler="index.on_event",
            code=lambda_.Code.from_inline(RETENTION_HANDLER.read_text()),
            timeout=Duration.minutes(1),
            role=role,
            log_group=log_group,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[
                self._client_group(
                    vpc,
                    env_config,
                    "RetentionSecurityGroup",
                    "InfluxDB retention handler",
                    "retention handler",
                )
            ],
        )
        provider = cr.Provider(
            self, "RetentionProvider", on_event_handler=handler, log_group=log_group
        )
        for child in provider.node.children:
            if child.node.id.startswith("framework-"):
                acknowledge(
                    child,
                    "CDK's provider framework function (not configurable): logs with the AWS "
                    "managed basic execution policy and invokes the retention handler by "
                    "version-qualified ARN.",
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole]",
                    f"AwsSolutions-IAM5[Resource::<{self.resolve(handler.node.default_child.logical_id)}.Arn>:*]",  # type: ignore[union-attr]
                )
        return CustomResource(
            self,
            "BucketRetention",
            service_token=provider.service_token,
            resource_type="Custom::InfluxBucketRetention",
            properties={
                "Url": self.url,
                "SecretArn": self.credentials.secret_arn,
                "Org": ORGANIZATION,
                "Bucket": BUCKET,
                "RetentionSeconds": str(env_config.influx_retention_days * 86_400),
            },
        )

    def _writer(
        self,
        env_config: Environment,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        telemetry: kinesis.IStream,
    ) -> lambda_.Function:
        writer_group = self._client_group(
            vpc, env_config, "WriterSecurityGroup", "InfluxDB writer Lambda", "writer Lambda"
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
                "INFLUXDB_URL": self.url,
                "INFLUXDB_SECRET_ARN": self.credentials.secret_arn,
                "INFLUXDB_ORG": ORGANIZATION,
                "INFLUXDB_BUCKET": BUCKET,
                "IDEMPOTENCY_TABLE": idempotency.table_name,
                "DEAD_LETTER_QUEUE_URL": dead_letters.queue_url,
                "POWERTOOLS_SERVICE_NAME": "influx-writer",
                "POWERTOOLS_METRICS_NAMESPACE": env_config.metrics_namespace,
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
