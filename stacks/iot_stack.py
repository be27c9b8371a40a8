"""AWS IoT Core for the factory gateways: thing type, a thing group per factory, the gateways'
IoT policy, the Greengrass token-exchange role, and the rules that route uploads.

IoT Core topics and rule names are account-wide, so each environment has its own: the cloud
topics are `iiot/<env>/factory/<factory>/...` (`Environment.factory_topic`; the edge stack sets
them in each factory's deployment) and the rules `iiot_<env>_<name>`.

Factory-scoped access: the gateway policy lets a gateway publish only under its own factory's
topics (the `factory_id` attribute of its thing, an IoT policy variable), so a gateway of one
factory cannot send another's data. The rules take the factory from the topic (`topic(4)`):
telemetry batches (binary, which IoT SQL cannot read) carry it in their Kinesis partition key,
anomalies whose `factory_id` differs from their topic's are not routed but logged and counted
(`FactoryMismatch`, alarmed). The token-exchange role grants only what the components need:
reading their artifacts and the published models (edge and ML stacks); uploads go through IoT
Core, never straight to the streams.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_logs as logs
from constructs import Construct

from config.environments import Environment
from iiot import topics
from stacks.constructs.access import acknowledge
from stacks.constructs.python_function import log_retention

THING = "${iot:Connection.Thing.ThingName}"  # an IoT policy variable, not a CDK token
FACTORY = "${iot:Connection.Thing.Attributes[factory_id]}"  # the gateway thing's attribute
# The gateway buffer's health snapshots (sensor_buffer/health.py) on its local status topic,
# relayed to the environment's cloud topic by the MQTT bridge (edge stack), become CloudWatch
# metrics in the environment's gateway namespace (Environment.gateway_metrics_namespace).
GATEWAY_STATUS_TOPIC = "factory/{factory_id}/gateway/status"
GATEWAY_BACKLOG_METRIC = "BacklogReadings"
# One per factory (`StatusReports-<factory>`): the silent-gateway alarm's source.
GATEWAY_REPORTS_METRIC = "StatusReports-{factory_id}"
# Anomalies whose factory_id is not their topic's factory (dropped, counted here).
FACTORY_MISMATCH_METRIC = "FactoryMismatch"
GATEWAY_OLDEST_UNSENT_METRIC = "OldestUnsentAgeSeconds"


class IotStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        telemetry: kinesis.IStream,
        anomalies: kinesis.IStream,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = env_config.prefix
        self.env_config = env_config
        self.thing_type = iot.CfnThingType(
            self,
            "GatewayType",
            thing_type_name=f"{prefix}-gateway",
            thing_type_properties=iot.CfnThingType.ThingTypePropertiesProperty(
                thing_type_description="Greengrass v2 core device on a factory's network",
                searchable_attributes=["factory_id"],
            ),
        )
        self.thing_groups: dict[str, iot.CfnThingGroup] = {}
        for factory in env_config.factories:
            self.thing_groups[factory] = iot.CfnThingGroup(
                self,
                f"Factory-{factory}",
                thing_group_name=f"{prefix}-{factory}",
                thing_group_properties=iot.CfnThingGroup.ThingGroupPropertiesProperty(
                    thing_group_description=f"Gateways of factory {factory}",
                    attribute_payload=iot.CfnThingGroup.AttributePayloadProperty(
                        attributes={"factory_id": factory}
                    ),
                ),
            )

        # Greengrass token exchange: what components may do with the core device's credentials.
        self.token_exchange_role = iam.Role(
            self,
            "TokenExchangeRole",
            assumed_by=iam.ServicePrincipal("credentials.iot.amazonaws.com"),
            description="Greengrass core devices: component artifacts and published models",
        )
        self.role_alias = iot.CfnRoleAlias(
            self,
            "TokenExchangeRoleAlias",
            role_alias=f"{prefix}-gateway-token-exchange",
            role_arn=self.token_exchange_role.role_arn,
            credential_duration_seconds=3600,
        )
        self.policy = iot.CfnPolicy(
            self,
            "GatewayPolicy",
            policy_name=f"{prefix}-gateway",
            policy_document=self._gateway_policy(),
        )

        # Sensors (Greengrass client devices) use their certificate with IoT Core only to
        # discover their gateway; everything else they say goes to the gateway's broker.
        self.sensor_policy = iot.CfnPolicy(
            self,
            "SensorPolicy",
            policy_name=f"{prefix}-sensor",
            policy_document={
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "greengrass:Discover",
                        "Resource": f"arn:{self.partition}:iot:{self.region}:{self.account}:"
                        f"thing/{THING}",
                    }
                ],
            },
        )

        # Rules: uploads go to Kinesis; failed actions are logged.
        errors = logs.LogGroup(
            self,
            "RuleErrors",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        rule_role = iam.Role(
            self,
            "RuleRole",
            assumed_by=iam.ServicePrincipal("iot.amazonaws.com"),
            description="IoT rules: put uploads into Kinesis, log failed actions",
        )
        telemetry.grant_write(rule_role)
        anomalies.grant_write(rule_role)
        errors.grant_write(rule_role)
        error_action = iot.CfnTopicRule.ActionProperty(
            cloudwatch_logs=iot.CfnTopicRule.CloudwatchLogsActionProperty(
                log_group_name=errors.log_group_name, role_arn=rule_role.role_arn
            )
        )

        def rule(
            name: str, sql: str, stream: kinesis.IStream, partition_key: str, description: str
        ) -> iot.CfnTopicRule:
            return iot.CfnTopicRule(
                self,
                name,
                rule_name=self.rule_name(name),
                topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                    description=description,
                    sql=sql,
                    aws_iot_sql_version="2016-03-23",
                    rule_disabled=False,
                    actions=[
                        iot.CfnTopicRule.ActionProperty(
                            kinesis=iot.CfnTopicRule.KinesisActionProperty(
                                stream_name=stream.stream_name,
                                partition_key=partition_key,
                                role_arn=rule_role.role_arn,
                            )
                        )
                    ],
                    error_action=error_action,
                ),
            )

        # Compact batches are binary: a bare SELECT * passes them through unchanged; the
        # topic's factory (the only one its gateway may publish) leads the partition key.
        self.telemetry_rule = rule(
            "TelemetryRule",
            f"SELECT * FROM '{env_config.factory_topic(topics.SENSOR_DATA, '+')}'",  # noqa: S608
            telemetry,
            "${topic(4)}/${newuuid()}",
            "Gateway batch uploads -> telemetry stream (factory from the topic)",
        )
        self._health_metrics(rule_role, error_action)
        # Anomalies keep per-machine order on the anomaly stream, which the alert router reads.
        anomaly_topic = env_config.factory_topic(topics.ANOMALIES, "+")
        self.anomaly_rule = rule(
            "AnomalyRule",
            f"SELECT * FROM '{anomaly_topic}' WHERE factory_id = topic(4)",  # noqa: S608
            anomalies,
            "${factory_id}/${machine_id}",
            "Gateway anomalies of the topic's factory -> anomaly stream -> alert router",
        )
        self._factory_mismatches(anomaly_topic, rule_role, errors, error_action)

    def _factory_mismatches(
        self, anomaly_topic: str, rule_role: iam.Role, errors: logs.LogGroup, error_action: Any
    ) -> None:
        """Anomalies that name another factory than their topic's: logged and counted."""
        self.mismatch_rule = iot.CfnTopicRule(
            self,
            "FactoryMismatchRule",
            rule_name=self.rule_name("FactoryMismatchRule"),
            topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                description="Anomalies whose factory_id is not their topic's: log and count",
                sql="SELECT topic(4) AS topic_factory, factory_id, machine_id, "  # noqa: S608
                f"clientid() AS client_id FROM '{anomaly_topic}' WHERE factory_id <> topic(4)",
                aws_iot_sql_version="2016-03-23",
                rule_disabled=False,
                actions=[
                    iot.CfnTopicRule.ActionProperty(
                        cloudwatch_logs=iot.CfnTopicRule.CloudwatchLogsActionProperty(
                            log_group_name=errors.log_group_name, role_arn=rule_role.role_arn
                        )
                    ),
                    iot.CfnTopicRule.ActionProperty(
                        cloudwatch_metric=iot.CfnTopicRule.CloudwatchMetricActionProperty(
                            metric_namespace=self.env_config.gateway_metrics_namespace,
                            metric_name=FACTORY_MISMATCH_METRIC,
                            metric_value="1",
                            metric_unit="Count",
                            role_arn=rule_role.role_arn,
                        )
                    ),
                ],
                error_action=error_action,
            ),
        )

    def rule_name(self, construct_id: str) -> str:
        """`iiot_dev_TelemetryRule`: rule names are account-wide and allow only [a-zA-Z0-9_]."""
        return f"iiot_{self.env_config.name}_{construct_id}"

    def _health_metrics(self, rule_role: iam.Role, error_action: Any) -> None:
        """Gateway health snapshots -> CloudWatch metrics (the backlog alarm's source)."""
        namespace = self.env_config.gateway_metrics_namespace
        rule_role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": namespace}},
            )
        )
        acknowledge(
            rule_role,
            "cloudwatch:PutMetricData has no resource-level permissions; the statement is "
            f"limited to the gateway namespace {namespace} by condition.",
            "AwsSolutions-IAM5[Resource::*]",
        )

        def metric(name: str, field: str, unit: str) -> iot.CfnTopicRule.ActionProperty:
            return iot.CfnTopicRule.ActionProperty(
                cloudwatch_metric=iot.CfnTopicRule.CloudwatchMetricActionProperty(
                    metric_namespace=namespace,
                    metric_name=name,
                    metric_value=f"${{{field}}}",
                    metric_unit=unit,
                    role_arn=rule_role.role_arn,
                )
            )

        status = self.env_config.cloud_topic(GATEWAY_STATUS_TOPIC.format(factory_id="+"))
        self.health_rule = iot.CfnTopicRule(
            self,
            "GatewayHealthRule",
            rule_name=self.rule_name("GatewayHealthRule"),
            topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                description="Gateway buffer health -> CloudWatch (backlog, oldest unsent)",
                sql="SELECT backlog_readings, oldest_unsent_age_s, 1 AS report "  # noqa: S608
                f"FROM '{status}'",
                aws_iot_sql_version="2016-03-23",
                rule_disabled=False,
                actions=[
                    metric(GATEWAY_BACKLOG_METRIC, "backlog_readings", "Count"),
                    metric(GATEWAY_OLDEST_UNSENT_METRIC, "oldest_unsent_age_s", "Seconds"),
                    # A count of status reports per factory: none in a period = a silent
                    # factory (its gateways stopped reporting), which the monitoring stack alarms.
                    metric(
                        GATEWAY_REPORTS_METRIC.format(factory_id="${topic(4)}"), "report", "Count"
                    ),
                ],
                error_action=error_action,
            ),
        )

    def _gateway_policy(self) -> dict[str, Any]:
        """Least privilege for a Greengrass core device: its own client id, its own
        `$aws/things/<thing>/` topics, its factory's upload, anomaly and status topics, the
        client-device operations for its factory's sensors, its token exchange."""
        region, account = self.region, self.account
        env = self.env_config
        topic = f"arn:{self.partition}:iot:{region}:{account}:topic"
        topic_filter = f"arn:{self.partition}:iot:{region}:{account}:topicfilter"
        thing = f"arn:{self.partition}:iot:{region}:{account}:thing"
        own = f"$aws/things/{THING}"
        # Client device auth keeps its certificate state in the core's `-gci` shadow.
        gci = f"$aws/things/{THING}-gci/shadow"
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "iot:Connect",
                    "Resource": f"arn:{self.partition}:iot:{region}:{account}:client/{THING}",
                    "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
                },
                {
                    "Effect": "Allow",
                    "Action": "iot:Publish",
                    "Resource": [
                        # Only its own factory's topics (the thing's factory_id attribute).
                        f"{topic}/{env.factory_topic(topics.SENSOR_DATA, FACTORY)}",
                        f"{topic}/{env.factory_topic(topics.ANOMALIES, FACTORY)}",
                        f"{topic}/{env.cloud_topic(GATEWAY_STATUS_TOPIC.format(factory_id=FACTORY))}",
                        f"{topic}/{own}/*",
                        f"{topic}/{gci}/*",
                    ],
                },
                {
                    "Effect": "Allow",
                    "Action": "iot:Subscribe",
                    "Resource": [f"{topic_filter}/{own}/*", f"{topic_filter}/{gci}/*"],
                },
                {
                    "Effect": "Allow",
                    "Action": "iot:Receive",
                    "Resource": [f"{topic}/{own}/*", f"{topic}/{gci}/*"],
                },
                {
                    # Client devices (the factory's sensors): the core verifies their
                    # certificates and publishes its own addresses for discovery.
                    "Effect": "Allow",
                    "Action": [
                        "greengrass:PutCertificateAuthorities",
                        "greengrass:VerifyClientDeviceIdentity",
                    ],
                    "Resource": "*",
                },
                {
                    "Effect": "Allow",
                    "Action": "greengrass:VerifyClientDeviceIoTCertificateAssociation",
                    # Only its own factory's sensors (ClientDevices: their thing names).
                    "Resource": f"{thing}/{env.sensor_thing_prefix(FACTORY)}*",
                },
                {
                    "Effect": "Allow",
                    "Action": [
                        "greengrass:GetConnectivityInfo",
                        "greengrass:UpdateConnectivityInfo",
                    ],
                    "Resource": f"{thing}/{THING}",
                },
                {
                    "Effect": "Allow",
                    "Action": [
                        "iot:GetThingShadow",
                        "iot:UpdateThingShadow",
                        "iot:DeleteThingShadow",
                    ],
                    "Resource": f"arn:{self.partition}:iot:{region}:{account}:thing/{THING}",
                },
                {
                    "Effect": "Allow",
                    "Action": "iot:AssumeRoleWithCertificate",
                    "Resource": self.role_alias.attr_role_alias_arn,
                },
                {
                    "Effect": "Allow",
                    "Action": [
                        "greengrass:GetComponentVersionArtifact",
                        "greengrass:ResolveComponentCandidates",
                        "greengrass:GetDeploymentConfiguration",
                        "greengrass:ListThingGroupsForCoreDevice",
                    ],
                    "Resource": "*",
                },
            ],
        }
