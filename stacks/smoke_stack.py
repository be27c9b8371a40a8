"""What the post-deploy smoke tests (`iiot smoke --env ENV`, local_platform/smoke.py) read and
may do in one environment: the stack outputs that name the resources they check, and the role
they assume.

The outputs are this stack's (`iiot-<env>-smoke`), except those naming another stack's
resource, which that stack outputs (`lake`: the state machine; `timeseries`: the InfluxDB URL
and secret); the smoke tests read the outputs of those stacks (SMOKE_OUTPUT_STACKS).

The role `iiot-<env>-smoke` may do exactly what the smoke tests do: find the IoT data
endpoint, connect as `iiot-<env>-smoke-*` and publish on the smoke factory's telemetry topic,
start and read the lake state machine's executions, read silver (the lake key decrypts), read
the InfluxDB writer's secret, start and read the training pipeline. It trusts the
environment's own account (an operator's `iiot smoke --role-arn`) and, when the environment is
deployed by the delivery pipeline, the toolchain account, whose smoke step assumes it
(stacks/pipeline_stack.py).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Arn, ArnFormat, Aws, CfnOutput, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from config.environments import Environment
from stacks.constructs.access import acknowledge, bucket_name

# The outputs' keys, which `iiot smoke` reads (local_platform/smoke.py: SmokeTargets).
OUTPUTS = {
    "telemetry_topic": "SmokeTelemetryTopic",
    "smoke_client_prefix": "SmokeClientPrefix",
    "lake_state_machine_arn": "LakeStateMachineArn",
    "silver_readings_uri": "SilverReadingsUri",
    "influx_url": "InfluxUrl",
    "influx_secret_arn": "InfluxSecretArn",
    "influx_org": "InfluxOrg",
    "influx_bucket": "InfluxBucket",
    "training_pipeline_name": "TrainingPipelineName",
}
# The stacks whose outputs the smoke tests read, by concern.
SMOKE_OUTPUT_STACKS = ("smoke", "lake", "timeseries")
SILVER_PREFIX = "silver/readings/"
SMOKE_FACTORY_INDEX = 0  # the smoke batch is published as the environment's first factory


def smoke_role_name(env_config: Environment) -> str:
    return f"{env_config.prefix}-smoke"


class SmokeStack(Stack):
    """Outputs and role of the post-deploy smoke tests (module doc)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        lake_state_machine: sfn.StateMachine,
        lake_key: kms.IKey,
        influx_url: str,
        influx_secret: secretsmanager.ISecret,
        influx_org: str,
        influx_bucket: str,
        training_pipeline_name: str,
        toolchain_account: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        factory = env_config.factories[SMOKE_FACTORY_INDEX]
        topic = env_config.factory_topic("factory/sensor/data", factory)
        client_prefix = f"{env_config.prefix}-smoke-"
        silver = f"s3://{bucket_name(env_config.prefix, 'lake')}/{SILVER_PREFIX.rstrip('/')}"
        values = {
            "telemetry_topic": topic,
            "smoke_client_prefix": client_prefix,
            "lake_state_machine_arn": lake_state_machine.state_machine_arn,
            "silver_readings_uri": silver,
            "influx_url": influx_url,
            "influx_secret_arn": influx_secret.secret_arn,
            "influx_org": influx_org,
            "influx_bucket": influx_bucket,
            "training_pipeline_name": training_pipeline_name,
        }
        # Each output in the stack that owns the resource: an output of this stack that
        # re-exported another stack's value would be an import (cfn-lint W6001).
        owners = {
            "lake_state_machine_arn": Stack.of(lake_state_machine),
            "influx_url": Stack.of(influx_secret),
            "influx_secret_arn": Stack.of(influx_secret),
        }
        for setting, output in OUTPUTS.items():
            CfnOutput(
                owners.get(setting, self),
                output,
                value=values[setting],
                description=f"iiot smoke: {setting}",
            )

        principals: list[iam.IPrincipal] = [iam.AccountPrincipal(Aws.ACCOUNT_ID)]
        if toolchain_account is not None:
            principals.append(iam.AccountPrincipal(toolchain_account))
        self.role = iam.Role(
            self,
            "SmokeRole",
            role_name=smoke_role_name(env_config),
            assumed_by=iam.CompositePrincipal(*principals),
            description=f"{env_config.prefix} post-deploy smoke tests (iiot smoke)",
        )

        def arn(service: str, resource: str, name: str) -> str:
            return Arn.format(
                {
                    "service": service,
                    "resource": resource,
                    "resource_name": name,
                    "arn_format": ArnFormat.SLASH_RESOURCE_NAME,
                },
                self,
            )

        # The lake bucket by its deterministic name (stacks/constructs/access.py), so that
        # the policy names no other stack's export.
        lake_arn = self.format_arn(
            service="s3", region="", account="", resource=bucket_name(env_config.prefix, "lake")
        )
        execution_arn = Arn.format(
            {
                "service": "states",
                "resource": "execution",
                "resource_name": f"{lake_state_machine.state_machine_name}:*",
                "arn_format": ArnFormat.COLON_RESOURCE_NAME,
            },
            self,
        )
        statements = [
            # DescribeEndpoint takes no resource.
            iam.PolicyStatement(actions=["iot:DescribeEndpoint"], resources=["*"]),
            iam.PolicyStatement(
                actions=["iot:Connect"], resources=[arn("iot", "client", f"{client_prefix}*")]
            ),
            iam.PolicyStatement(actions=["iot:Publish"], resources=[arn("iot", "topic", topic)]),
            iam.PolicyStatement(
                actions=["states:StartExecution"],
                resources=[lake_state_machine.state_machine_arn],
            ),
            iam.PolicyStatement(actions=["states:DescribeExecution"], resources=[execution_arn]),
            iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[f"{lake_arn}/{SILVER_PREFIX}*"]
            ),
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[lake_arn],
                conditions={"StringLike": {"s3:prefix": [f"{SILVER_PREFIX}*"]}},
            ),
            iam.PolicyStatement(actions=["kms:Decrypt"], resources=[lake_key.key_arn]),
            iam.PolicyStatement(
                actions=["sagemaker:StartPipelineExecution"],
                resources=[arn("sagemaker", "pipeline", training_pipeline_name)],
            ),
            iam.PolicyStatement(
                actions=["sagemaker:DescribePipelineExecution"],
                resources=[arn("sagemaker", "pipeline", f"{training_pipeline_name}/execution/*")],
            ),
        ]
        for statement in statements:
            self.role.add_to_principal_policy(statement)
        # Explicit statements, not influx_secret.grant_read: a grant would also write the
        # role into the timeseries stack's key policy, a reference back to this stack.
        self.role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue"], resources=[influx_secret.secret_arn]
            )
        )
        if influx_secret.encryption_key is not None:
            self.role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["kms:Decrypt"], resources=[influx_secret.encryption_key.key_arn]
                )
            )
        acknowledge(
            self.role,
            "iot:DescribeEndpoint has no resource-level permissions in IAM: the smoke tests "
            "look up the account's data endpoint with it.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            self.role,
            "The smoke tests read silver's readings table to find the test batch: Delta names "
            "its log and data files at run time, so the resource is the table's key space, "
            "read-only.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::"
            f"{env_config.prefix}-lake-<AWS::AccountId>-<AWS::Region>/{SILVER_PREFIX}*]",
        )
