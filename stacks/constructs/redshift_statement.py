"""One SQL statement run on Redshift Serverless while the stack deploys, waited for.

CDK's provider framework calls `redshift_sql_handler.on_event` (submit through the Redshift
Data API) and then `is_complete` every 10 s until the statement finishes; a failed statement
fails the deployment with Redshift's error instead of leaving it green with the object missing.
Both handlers share one role, because the Data API lets only the role that ran a statement
describe it.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_redshiftserverless as redshift
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct

from stacks.constructs.access import acknowledge
from stacks.constructs.python_function import ARCHITECTURE, RUNTIME, log_retention

HANDLER_SOURCE = Path(__file__).with_name("redshift_sql_handler.py")


class RedshiftStatement(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        workgroup: redshift.CfnWorkgroup,
        database: str,
        secret_arn: str,
        secret_key: kms.IKey,
        sql: str,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention(log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            "HandlerRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Runs one SQL statement on the warehouse and waits for it",
        )
        log_group.grant_write(role)
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["redshift-data:ExecuteStatement", "redshift-data:BatchExecuteStatement"],
                resources=[workgroup.attr_workgroup_workgroup_arn],
            )
        )
        # DescribeStatement has no resource-level permissions; the Data API shows a statement
        # only to the role that ran it.
        role.add_to_policy(
            iam.PolicyStatement(actions=["redshift-data:DescribeStatement"], resources=["*"])
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[secret_arn])
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["kms:Decrypt"], resources=[secret_key.key_arn])
        )
        acknowledge(
            role,
            "redshift-data:DescribeStatement has no resource-level permissions; the Data API "
            "only describes statements this same role ran.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        source = HANDLER_SOURCE.read_text()

        def handler(name: str, entry: str) -> lambda_.Function:
            return lambda_.Function(
                self,
                name,
                description=f"Warehouse SQL statement: {entry}",
                runtime=RUNTIME,
                architecture=ARCHITECTURE,
                handler=f"index.{entry}",
                code=lambda_.Code.from_inline(source),
                timeout=Duration.minutes(1),
                role=role,
                log_group=log_group,
            )

        provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=handler("Submit", "on_event"),
            is_complete_handler=handler("Wait", "is_complete"),
            query_interval=Duration.seconds(10),
            total_timeout=Duration.minutes(15),
            log_group=log_group,
            disable_waiter_state_machine_logging=False,
            waiter_state_machine_log_options=cr.LogOptions(
                destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
        )
        framework = provider.node
        for child in framework.children:
            if child.node.id.startswith("framework-") or child.node.id == "waiter-state-machine":
                acknowledge(
                    child,
                    "CDK's provider framework (its own functions and waiter state machine, not "
                    "configurable): logs with the AWS managed basic execution policy and invokes "
                    "the two handlers above by version-qualified ARN; the waiter logs every "
                    "event to this construct's log group (CloudWatch Logs delivery actions have no "
                    "resource-level permissions) but has no X-Ray option.",
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole]",
                    *(
                        f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>:*]"
                        for logical_id in _function_ids(self)
                    ),
                    "AwsSolutions-IAM5[Resource::*]",
                    "AwsSolutions-SF2",
                )
        self._target = {
            "WorkgroupName": workgroup.workgroup_name,
            "Database": database,
            "SecretArn": secret_arn,
        }
        self._service_token = provider.service_token
        self.resource = CustomResource(
            self,
            "Resource",
            service_token=provider.service_token,
            resource_type="Custom::RedshiftStatement",
            properties={**self._target, "Sql": sql},
        )

    def then(self, construct_id: str, sqls: list[str]) -> CustomResource:
        """Statements run after this one, in one transaction (BatchExecuteStatement), by the
        same handlers and waiter; a change of any of them runs them all again."""
        batch = CustomResource(
            self,
            construct_id,
            service_token=self._service_token,
            resource_type="Custom::RedshiftBatch",
            properties={**self._target, "Sqls": sqls},
        )
        batch.node.add_dependency(self.resource)
        return batch


def _function_ids(scope: Construct) -> list[str]:
    """The logical ids of every function under `scope`: the two handlers and the provider's."""
    stack = Stack.of(scope)
    return sorted(
        stack.resolve(node.logical_id)
        for node in scope.node.find_all()
        if isinstance(node, lambda_.CfnFunction)
    )
