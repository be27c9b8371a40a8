"""What the post-deploy smoke tests (`iiot smoke --env ENV`, local_platform/smoke.py) read and
may do in one environment: the stack outputs that name the resources they check, and the role
they assume.

The outputs are this stack's (`iiot-<env>-smoke`), except those naming another stack's
resource, which that stack outputs (`lake`: the state machine; `timeseries`: the InfluxDB URL
and secret); the smoke tests read the outputs of those stacks (SMOKE_OUTPUT_STACKS).

The role `iiot-<env>-smoke` may do exactly what the smoke tests do: find the IoT data
endpoint, connect as `iiot-<env>-smoke-*` and publish on the smoke factory's telemetry topic,
start and read the lake state machine's executions, read silver (the lake key decrypts), read
the InfluxDB writer's secret, invoke the InfluxDB probe, start and read the training
pipeline. It trusts the environment's own account (an operator's `iiot smoke --role-arn`) and,
when the environment is deployed by the delivery pipeline, the toolchain account, whose smoke
step assumes it (stacks/pipeline_stack.py).

The InfluxDB probe (`iiot-<env>-smoke`'s function, output `SmokeInfluxProbe`;
lambdas/smoke_probe) runs the smoke tests' InfluxDB count from inside the environment's VPC,
where the private Timestream for InfluxDB instance is: the pipeline's smoke step runs in the
toolchain account and has no network path to it. It sits in the data subnets as the InfluxDB
writer does, with its own security group that may reach only InfluxDB's port and the AWS API
endpoints (443 in the VPC); InfluxDB's security group admits it by an ingress rule kept in this
stack (the time-series stack knows no smoke stack). It reads the writer's secret by explicit
statements on its own role. The smoke role may invoke it and no other function.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Arn, ArnComponents, ArnFormat, Aws, CfnOutput, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from config.environments import Environment
from stacks.artifacts import ROOT
from stacks.constructs.access import acknowledge, bucket_name
from stacks.constructs.python_function import PythonFunction
from stacks.timeseries_stack import INFLUX_PORT

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
    "influx_probe_function": "SmokeInfluxProbe",
}
# The stacks whose outputs the smoke tests read, by concern.
SMOKE_OUTPUT_STACKS = ("smoke", "lake", "timeseries")
SILVER_PREFIX = "silver/readings/"
SMOKE_FACTORY_INDEX = 0  # the smoke batch is published as the environment's first factory
PROBE_DIR = ROOT / "lambdas" / "smoke_probe"


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
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        influx_url: str,
        influx_security_group: ec2.ISecurityGroup,
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
        self.probe = self._probe(env_config, vpc, subnets, influx_url, influx_security_group,
                                 influx_secret)  # fmt: skip
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
            "influx_probe_function": self.probe.function_name,
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
            # ArnComponents, not a dict: jsii reads a dict's keys in camelCase and would drop
            # resource_name and arn_format (the ARN would end at `:client`, `:topic`).
            return Arn.format(
                ArnComponents(
                    service=service,
                    resource=resource,
                    resource_name=name,
                    arn_format=ArnFormat.SLASH_RESOURCE_NAME,
                ),
                self,
            )

        # The lake bucket by its deterministic name (stacks/constructs/access.py), so that
        # the policy names no other stack's export.
        lake_arn = self.format_arn(
            service="s3", region="", account="", resource=bucket_name(env_config.prefix, "lake")
        )
        # The state machine's generated name as the export CDK makes for it anyway, so that
        # the acknowledgment below can name the finding (cdk-nag prints the export's name).
        machine_name = Stack.of(lake_state_machine).export_value(
            lake_state_machine.state_machine_name
        )
        machine_export = self.resolve(machine_name)["Fn::ImportValue"]
        execution_arn = Arn.format(
            ArnComponents(
                service="states",
                resource="execution",
                resource_name=f"{machine_name}:*",
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            ),
            self,
        )
        statements = [
            # The InfluxDB probe, and no other function.
            iam.PolicyStatement(
                actions=["lambda:InvokeFunction"], resources=[self.probe.function_arn]
            ),
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
        _read_secret(self.role, influx_secret)
        acknowledge(
            self.role,
            "iot:DescribeEndpoint has no resource-level permissions in IAM: the smoke tests "
            "look up the account's data endpoint with it.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            self.role,
            "Each smoke run connects with its own client id under the smoke prefix "
            f"({client_prefix}<run>): Connect is limited to that prefix, never a gateway's id.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:"
            f"<AWS::AccountId>:client/{client_prefix}*]",
        )
        acknowledge(
            self.role,
            "The smoke tests read back the lake executions they start, whose names are made "
            "per run: DescribeExecution on the lake state machine's executions only.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:"
            f"<AWS::AccountId>:execution:{machine_export}:*]",
        )
        acknowledge(
            self.role,
            "SageMaker names a pipeline execution when it starts: the smoke tests read back "
            "the executions of the training pipeline only.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
            f"<AWS::AccountId>:pipeline/{training_pipeline_name}/execution/*]",
        )
        acknowledge(
            self.role,
            "The smoke tests read silver's readings table to find the test batch: Delta names "
            "its log and data files at run time, so the resource is the table's key space, "
            "read-only.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::"
            f"{env_config.prefix}-lake-<AWS::AccountId>-<AWS::Region>/{SILVER_PREFIX}*]",
        )

    def _probe(
        self,
        env_config: Environment,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        influx_url: str,
        influx_security_group: ec2.ISecurityGroup,
        influx_secret: secretsmanager.ISecret,
    ) -> lambda_.IFunction:
        """The InfluxDB probe in the VPC (module doc)."""
        group = ec2.SecurityGroup(
            self,
            "ProbeSecurityGroup",
            vpc=vpc,
            description="iiot smoke InfluxDB probe: InfluxDB and the AWS API endpoints",
            allow_all_outbound=False,
        )
        group.add_egress_rule(influx_security_group, ec2.Port.tcp(INFLUX_PORT), "InfluxDB API")
        group.add_egress_rule(
            ec2.Peer.ipv4(env_config.vpc_cidr), ec2.Port.tcp(443), "AWS APIs via VPC endpoints"
        )
        # The rule lives in this stack (remote_rule): the time-series stack knows no probe.
        influx_security_group.add_ingress_rule(
            group, ec2.Port.tcp(INFLUX_PORT), "InfluxDB API from the smoke tests' probe",
            remote_rule=True,
        )  # fmt: skip
        probe = PythonFunction(
            self,
            "InfluxProbe",
            function_dir=PROBE_DIR,
            description="iiot smoke: counts the test batch's readings in InfluxDB (in the VPC)",
            environment={
                "INFLUXDB_URL": influx_url,
                "INFLUXDB_SECRET_ARN": influx_secret.secret_arn,
            },
            log_retention_days=env_config.log_retention_days,
            timeout=Duration.seconds(30),
            memory_size=128,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[group],
        )
        _read_secret(probe.role, influx_secret)
        acknowledge(
            probe.role,
            "X-Ray PutTraceSegments/PutTelemetryRecords (active tracing) and the VPC network "
            "interface actions (ec2:CreateNetworkInterface etc.) do not support resource-level "
            "permissions.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        return probe.function


def _read_secret(role: iam.IRole, secret: secretsmanager.ISecret) -> None:
    """`role` may read `secret` (and decrypt it with its key). Explicit statements, not
    `secret.grant_read`: a grant would also write the role into the time-series stack's key
    policy, a reference back to this stack (a cycle)."""
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["secretsmanager:GetSecretValue"], resources=[secret.secret_arn]
        )
    )
    if secret.encryption_key is not None:
        role.add_to_principal_policy(
            iam.PolicyStatement(actions=["kms:Decrypt"], resources=[secret.encryption_key.key_arn])
        )
