"""Anomaly alerting: the anomaly stream (Flink rules and gateways write to it), the operators'
alert topic, and the alert router Lambda that reads the stream and notifies.

What the router knows of each machine's state: the maintenance system publishes every completed
job to IoT Core (`iiot/<env>/factory/<factory>/maintenance`, the topic the gateways' predictors
read as `factory/<factory>/maintenance`); the maintenance rule writes it into the machine state
table (one item per job), where the router finds when a machine returned to service and
shelves its start-up transients (lambdas/alert_router/service.py). Gateways may not publish on
that topic (their IoT policy), only the maintenance system's integration."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from config.environments import Environment
from stacks import artifacts
from stacks.constructs.access import acknowledge, data_removal_policy
from stacks.constructs.dead_letters import dead_letter_queue
from stacks.constructs.python_function import PythonFunction, log_retention

# The maintenance system's topic for completed jobs (the environment's factory topic).
MAINTENANCE_TOPIC = "factory/maintenance"
# How long a completed job stays in the machine state table (DynamoDB TTL): the router needs a
# machine's latest job before an anomaly, also for a backlog replayed from the anomaly stream
# (at most its retention, a few days).
MACHINE_STATE_RETENTION_S = 30 * 86_400
# What the maintenance rule keeps of a completed job (beside the TTL): its key, machine and job.
MACHINE_STATE_FIELDS = (
    "factory_id",
    "machine_id",
    "completed_at_ms",
    "started_at_ms",
    "maintenance_id",
    "kind",
)


class AlertingStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, env_config: Environment, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.key = kms.Key(
            self,
            "AlertKey",
            alias=f"alias/{env_config.prefix}-alerts",
            description="Encrypts the alert topic and the alert router's dead-letter queue",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.anomalies = kinesis.Stream(
            self,
            "Anomalies",
            stream_name=f"{env_config.prefix}-anomalies",
            stream_mode=kinesis.StreamMode.ON_DEMAND,
            retention_period=Duration.hours(env_config.kinesis_retention_hours),
            encryption=kinesis.StreamEncryption.MANAGED,
            removal_policy=data_removal_policy(env_config),
        )
        self.alert_topic = sns.Topic(
            self,
            "AlertTopic",
            topic_name=f"{env_config.prefix}-alerts",
            display_name="IIoT equipment alerts",
            master_key=self.key,
            enforce_ssl=True,
        )
        self.router = self._router(env_config)
        self._subscribe(env_config)

    def _subscribe(self, env_config: Environment) -> None:
        """The people and systems the alerts reach, from the environment's typed settings
        (`<env>:alert_emails`, `<env>:alert_https`, `<env>:escalation_emails`)."""
        for address in env_config.alert_emails:
            self.alert_topic.add_subscription(subscriptions.EmailSubscription(address))
        for url in env_config.alert_https:
            self.alert_topic.add_subscription(subscriptions.UrlSubscription(url))
        for address in env_config.escalation_emails:
            self.escalation_topic.add_subscription(subscriptions.EmailSubscription(address))

    def _router(self, env_config: Environment) -> lambda_.Function:
        removal = RemovalPolicy.DESTROY

        def table(name: str, partition_key: str, ttl: str) -> dynamodb.Table:
            return dynamodb.Table(
                self,
                name,
                partition_key=dynamodb.Attribute(
                    name=partition_key, type=dynamodb.AttributeType.STRING
                ),
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
                encryption_key=self.key,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True
                ),
                time_to_live_attribute=ttl,
                removal_policy=removal,
            )

        # Cooldown per machine/metric/type (lambdas/alert_router/repository.py) and the
        # Powertools idempotency records keyed on anomaly_id (default attribute names).
        cooldowns = table("Cooldowns", "pk", "expires_at")
        idempotency = table("Idempotency", "id", "expiration")
        self.machine_state = self._machine_state(env_config)
        self.escalation_topic = sns.Topic(
            self,
            "EscalationTopic",
            topic_name=f"{env_config.prefix}-alerts-critical",
            display_name="IIoT critical equipment alerts (escalation)",
            master_key=self.key,
            enforce_ssl=True,
        )
        dead_letters = dead_letter_queue(
            self, "RouterDeadLetters", self.key, sender="the router (invalid anomalies)"
        )
        function = PythonFunction(
            self,
            "AlertRouter",
            function_dir=artifacts.ALERT_ROUTER.require().parent,
            description="Routes anomalies from the anomaly stream to the alert topics",
            environment={
                "ALERT_TOPIC_ARN": self.alert_topic.topic_arn,
                "ESCALATION_TOPIC_ARN": self.escalation_topic.topic_arn,
                "COOLDOWN_TABLE": cooldowns.table_name,
                "IDEMPOTENCY_TABLE": idempotency.table_name,
                "DEAD_LETTER_QUEUE_URL": dead_letters.queue_url,
                "MACHINE_STATE_TABLE": self.machine_state.table_name,
                "POWERTOOLS_SERVICE_NAME": "alert-router",
                "POWERTOOLS_METRICS_NAMESPACE": env_config.metrics_namespace,
                "IIOT_ENVIRONMENT": env_config.name,
            },
            log_retention_days=env_config.log_retention_days,
            timeout=Duration.seconds(30),
        )
        router = function.function
        self.alert_topic.grant_publish(router)
        self.escalation_topic.grant_publish(router)
        cooldowns.grant_read_write_data(router)
        idempotency.grant_read_write_data(router)
        # The router only asks for a machine's latest completed job (a Query; DynamoDB reads
        # the customer-key table with the caller's kms:Decrypt). Its start-up window is the
        # function's default (STARTUP_WINDOW_SECONDS, lambdas/alert_router/models.py).
        self.machine_state.grant(router, "dynamodb:Query")
        self.key.grant(router, "kms:Decrypt", "kms:DescribeKey")
        dead_letters.grant_send_messages(router)
        router.add_event_source(
            sources.KinesisEventSource(
                self.anomalies,
                starting_position=lambda_.StartingPosition.TRIM_HORIZON,
                batch_size=100,
                max_batching_window=Duration.seconds(1),
                bisect_batch_on_error=True,
                retry_attempts=5,
                report_batch_item_failures=True,
                on_failure=sources.SqsDlq(dead_letters),
            )
        )
        self.router_dead_letters = dead_letters
        acknowledge(
            function.role,
            "X-Ray PutTraceSegments and PutTelemetryRecords (active tracing) do not support "
            "resource-level permissions.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            function.role,
            "CDK's grants for the KMS-encrypted topics, tables and queue: envelope encryption "
            "needs GenerateDataKey*/ReEncrypt* variants, and the statement is limited to the "
            "alerting stack's own key.",
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
        )
        return router

    def _machine_state(self, env_config: Environment) -> dynamodb.Table:
        """The machine state table and the IoT rule that fills it from the maintenance
        system's completed jobs (each job once: its machine and completion time are the key)."""
        table = dynamodb.Table(
            self,
            "MachineState",
            partition_key=dynamodb.Attribute(name="machine_id", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="completed_at_ms", type=dynamodb.AttributeType.NUMBER),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute="expires_at",
            removal_policy=RemovalPolicy.DESTROY,
        )
        errors = logs.LogGroup(
            self,
            "MaintenanceRuleErrors",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            "MaintenanceRuleRole",
            assumed_by=iam.ServicePrincipal("iot.amazonaws.com"),
            description="IoT maintenance rule: completed jobs into the machine state table",
        )
        table.grant(role, "dynamodb:PutItem")
        self.key.grant(role, "kms:Decrypt", "kms:DescribeKey")
        errors.grant_write(role)
        topic = env_config.factory_topic(MAINTENANCE_TOPIC, "+")
        self.maintenance_rule = iot.CfnTopicRule(
            self,
            "MaintenanceRule",
            # Rule names are account-wide and allow only [a-zA-Z0-9_] (as IotStack.rule_name).
            rule_name=f"iiot_{env_config.name}_MaintenanceRule",
            topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                description="Completed maintenance jobs of the topic's factory -> machine state "
                "table (the alert router's start-up shelving)",
                sql=f"SELECT {', '.join(MACHINE_STATE_FIELDS)}, "  # noqa: S608
                f"floor(completed_at_ms / 1000) + {MACHINE_STATE_RETENTION_S} AS expires_at "
                f"FROM '{topic}' WHERE factory_id = topic(4)",
                aws_iot_sql_version="2016-03-23",
                rule_disabled=False,
                actions=[
                    iot.CfnTopicRule.ActionProperty(
                        dynamo_d_bv2=iot.CfnTopicRule.DynamoDBv2ActionProperty(
                            put_item=iot.CfnTopicRule.PutItemInputProperty(
                                table_name=table.table_name
                            ),
                            role_arn=role.role_arn,
                        )
                    )
                ],
                error_action=iot.CfnTopicRule.ActionProperty(
                    cloudwatch_logs=iot.CfnTopicRule.CloudwatchLogsActionProperty(
                        log_group_name=errors.log_group_name, role_arn=role.role_arn
                    )
                ),
            ),
        )
        return table
