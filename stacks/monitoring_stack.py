"""Operations monitoring: the alarm topic, alarms on every moving part, one dashboard."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_budgets as budgets
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from config.environments import Environment
from stacks.iot_stack import (
    FACTORY_MISMATCH_METRIC,
    GATEWAY_BACKLOG_METRIC,
    GATEWAY_REPORTS_METRIC,
)

# The gateway buffer's health metric: readings stored and not yet uploaded (the largest of any
# gateway reporting in the period).
GATEWAY_BACKLOG_ALARM_READINGS = 1_000_000  # about 50 s of a 20K readings/s factory
ITERATOR_AGE_ALARM = Duration.minutes(5)
# A factory whose gateways sent no health report for this long is silent (they report every
# minute or so, sensor_buffer/health.py); missing data is breaching.
SILENT_GATEWAY_AFTER = Duration.minutes(15)


@dataclass(frozen=True)
class Monitored:
    """What the other stacks expose for monitoring."""

    telemetry: kinesis.IStream
    anomalies: kinesis.IStream
    delivery_stream_name: str
    functions: Mapping[str, lambda_.IFunction]
    flink_application_name: str
    flink_consumer_name: str  # the rules' enhanced fan-out consumer of the telemetry stream
    flink_dead_letters: kinesis.IStream  # poison batches the rules' decoder refused
    lake_run: sfn.IStateMachine
    pipeline_name: str


class MonitoringStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        monitored: Monitored,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        key = kms.Key(
            self,
            "AlarmKey",
            alias=f"alias/{env_config.prefix}-alarms",
            description="Encrypts the operations alarm topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        # CloudWatch alarms and AWS Budgets publish to an encrypted topic only if they may use
        # its key.
        key.grant(
            iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*"
        )
        key.grant(
            iam.ServicePrincipal("budgets.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*"
        )
        self.alarm_topic = sns.Topic(
            self,
            "AlarmTopic",
            topic_name=f"{env_config.prefix}-operations",
            display_name="IIoT platform operations alarms",
            master_key=key,
            enforce_ssl=True,
        )
        if env_config.alarm_email:  # every environment may name one (<env>:alarm_email)
            self.alarm_topic.add_subscription(
                subscriptions.EmailSubscription(env_config.alarm_email)
            )
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        period = Duration.minutes(5)
        self.budget = self._budget(env_config)

        for name, stream in (
            ("Telemetry", monitored.telemetry),
            ("Anomalies", monitored.anomalies),
        ):
            self._alarm(
                f"{name}IteratorAge",
                stream.metric_get_records_iterator_age_milliseconds(
                    statistic="Maximum", period=period
                ),
                threshold=ITERATOR_AGE_ALARM.to_milliseconds(),
                description=f"Consumers of the {name.lower()} stream are falling behind",
            )
        # The Flink rules read the telemetry stream through their own enhanced fan-out
        # consumer: GetRecords' iterator age does not see it, the consumer's own metric does.
        self._alarm(
            "FlinkConsumerBehind",
            cloudwatch.Metric(
                namespace="AWS/Kinesis",
                metric_name="SubscribeToShardEvent.MillisBehindLatest",
                dimensions_map={
                    "StreamName": monitored.telemetry.stream_name,
                    "ConsumerName": monitored.flink_consumer_name,
                },
                statistic="Maximum",
                period=period,
            ),
            threshold=ITERATOR_AGE_ALARM.to_milliseconds(),
            description="The Flink stream rules are falling behind the telemetry stream (more "
            "KPUs, or see the application's logs)",
        )
        self._alarm(
            "FlinkDeadLetters",
            monitored.flink_dead_letters.metric_incoming_records(statistic="Sum", period=period),
            threshold=0,
            description="The stream rules' decoder refused telemetry records (poison batches; "
            "read them on the dead-letter stream)",
        )
        self._alarm(
            "TelemetryWriteThrottled",
            monitored.telemetry.metric_put_records_throttled_records(
                statistic="Sum", period=period
            ),
            threshold=0,
            description="Telemetry writes are throttled: the stream needs more capacity",
        )
        self._alarm(
            "FirehoseDeliveryFailures",
            _firehose(monitored, "DeliveryToS3.Success", "Minimum"),
            threshold=1,
            comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            description="Firehose failed to deliver telemetry to the bronze bucket",
        )
        self._alarm(
            "FirehoseDataFreshness",
            _firehose(monitored, "DeliveryToS3.DataFreshness", "Maximum"),
            threshold=900,
            description="Telemetry waits more than 15 minutes to reach the bronze bucket",
        )
        for name, function in monitored.functions.items():
            self._alarm(
                f"{name}Errors",
                function.metric_errors(statistic="Sum", period=period),
                threshold=0,
                description=f"The {name} function raised errors",
            )
            self._alarm(
                f"{name}IteratorAge",
                function.metric("IteratorAge", statistic="Maximum", period=period),
                threshold=ITERATOR_AGE_ALARM.to_milliseconds(),
                description=f"The {name} function is falling behind its stream",
            )
        self._alarm(
            "FlinkDowntime",
            cloudwatch.Metric(
                namespace="AWS/KinesisAnalytics",
                metric_name="downtime",
                dimensions_map={"Application": monitored.flink_application_name},
                statistic="Maximum",
                period=Duration.minutes(1),
            ),
            threshold=0,
            description="The Flink application is restarting or down",
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )
        self._alarm(
            "LakeRunFailed",
            monitored.lake_run.metric_failed(statistic="Sum", period=period),
            threshold=0,
            description="A lake run (bronze -> silver -> gold -> maintain) failed",
        )
        self._alarm(
            "LakeRunTimedOut",
            monitored.lake_run.metric_timed_out(statistic="Sum", period=period),
            threshold=0,
            description="A lake run timed out",
        )
        self._alarm(
            "PipelineRunFailed",
            cloudwatch.Metric(
                namespace="AWS/Sagemaker/ModelBuildingPipeline",
                metric_name="ExecutionFailed",
                dimensions_map={"PipelineName": monitored.pipeline_name},
                statistic="Sum",
                period=period,
            ),
            threshold=0,
            description="A run of the training pipeline failed",
        )
        for factory in env_config.factories:
            self._alarm(
                f"GatewaySilent-{factory}",
                cloudwatch.Metric(
                    namespace=env_config.gateway_metrics_namespace,
                    metric_name=GATEWAY_REPORTS_METRIC.format(factory_id=factory),
                    statistic="Sum",
                    period=SILENT_GATEWAY_AFTER,
                ),
                threshold=1,
                comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
                description=f"No gateway of {factory} reported its health for "
                f"{SILENT_GATEWAY_AFTER.to_minutes()} minutes (offline, or not yet installed)",
                treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            )
        self._alarm(
            "FactoryMismatch",
            cloudwatch.Metric(
                namespace=env_config.gateway_metrics_namespace,
                metric_name=FACTORY_MISMATCH_METRIC,
                statistic="Sum",
                period=period,
            ),
            threshold=0,
            description="A gateway sent anomalies of another factory (dropped; see the IoT "
            "rule error log)",
        )
        self._alarm(
            "GatewayBacklog",
            cloudwatch.Metric(
                namespace=env_config.gateway_metrics_namespace,
                metric_name=GATEWAY_BACKLOG_METRIC,
                statistic="Maximum",
                period=period,
            ),
            threshold=GATEWAY_BACKLOG_ALARM_READINGS,
            description="A gateway holds a large upload backlog (offline or throttled)",
        )

        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=f"{env_config.prefix}-platform"
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Telemetry stream",
                left=[monitored.telemetry.metric_incoming_records(period=period)],
                right=[
                    monitored.telemetry.metric_get_records_iterator_age_milliseconds(
                        period=period, statistic="Maximum"
                    )
                ],
            ),
            cloudwatch.GraphWidget(
                title="Firehose to bronze",
                left=[_firehose(monitored, "DeliveryToS3.Records", "Sum")],
                right=[_firehose(monitored, "DeliveryToS3.DataFreshness", "Maximum")],
            ),
            cloudwatch.GraphWidget(
                title="Gateway backlog",
                left=[
                    cloudwatch.Metric(
                        namespace=env_config.gateway_metrics_namespace,
                        metric_name=GATEWAY_BACKLOG_METRIC,
                        statistic="Maximum",
                        period=period,
                    )
                ],
            ),
        )
        if monitored.functions:
            self.dashboard.add_widgets(
                cloudwatch.GraphWidget(
                    title="Functions: errors",
                    left=[f.metric_errors(period=period) for f in monitored.functions.values()],
                )
            )
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(
                title="Alarms", alarms=list(self.alarms.values()), width=24
            )
        )

    def _budget(self, env_config: Environment) -> budgets.CfnBudget:
        """A monthly cost budget for the environment's resources (its `environment` tag, a
        cost allocation tag to activate once per account), alerting the operations topic at
        80 % of actual spend and at 100 % forecast."""
        self.alarm_topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AwsBudgetsPublish",
                principals=[iam.ServicePrincipal("budgets.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.alarm_topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": self.account}},
            )
        )
        subscribers = [
            budgets.CfnBudget.SubscriberProperty(
                subscription_type="SNS", address=self.alarm_topic.topic_arn
            )
        ]

        def notify(kind: str, percent: int) -> Any:
            return budgets.CfnBudget.NotificationWithSubscribersProperty(
                notification=budgets.CfnBudget.NotificationProperty(
                    notification_type=kind,
                    comparison_operator="GREATER_THAN",
                    threshold=percent,
                    threshold_type="PERCENTAGE",
                ),
                subscribers=subscribers,
            )

        return budgets.CfnBudget(
            self,
            "MonthlyBudget",
            budget=budgets.CfnBudget.BudgetDataProperty(
                budget_name=f"{env_config.prefix}-monthly",
                budget_type="COST",
                time_unit="MONTHLY",
                budget_limit=budgets.CfnBudget.SpendProperty(
                    amount=env_config.monthly_budget_usd, unit="USD"
                ),
                cost_filters={"TagKeyValue": [f"user:environment${env_config.name}"]},
            ),
            notifications_with_subscribers=[notify("ACTUAL", 80), notify("FORECASTED", 100)],
        )

    def _alarm(
        self,
        name: str,
        metric: cloudwatch.IMetric,
        *,
        threshold: float,
        description: str,
        comparison: cloudwatch.ComparisonOperator = (
            cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD
        ),
        treat_missing_data: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING,
    ) -> None:
        alarm = cloudwatch.Alarm(
            self,
            name,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=comparison,
            treat_missing_data=treat_missing_data,
            alarm_description=description,
        )
        alarm.add_alarm_action(actions.SnsAction(self.alarm_topic))
        alarm.add_ok_action(actions.SnsAction(self.alarm_topic))
        self.alarms[name] = alarm


def _firehose(monitored: Monitored, name: str, statistic: str) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace="AWS/Firehose",
        metric_name=name,
        dimensions_map={"DeliveryStreamName": monitored.delivery_stream_name},
        statistic=statistic,
        period=Duration.minutes(5),
    )
