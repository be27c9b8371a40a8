"""A scheduled run of Spark jobs on EMR Serverless, one after the other.

A Step Functions state machine submits each job with the `startJobRun.sync` integration (it
waits for the job's end, retries a failed job twice, five then ten minutes later) and stops at
the first job that still fails; an EventBridge schedule starts it. The jobs share one entry
point, uploaded as an asset, and differ in their arguments and Spark configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_emrserverless as emrs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from stacks.constructs.access import acknowledge
from stacks.constructs.python_function import log_retention

RUN_TIMEOUT = Duration.hours(6)
# A failed job run is retried after 5, then 10 minutes.
RETRY = {
    "ErrorEquals": ["States.TaskFailed"],
    "IntervalSeconds": 300,
    "MaxAttempts": 2,
    "BackoffRate": 2,
}


@dataclass(frozen=True)
class SparkJob:
    """One job of the run: its state is `Run<Name>`, its job run `<run_name_prefix><name>`."""

    name: str
    arguments: Sequence[str]
    spark_submit_parameters: str


class LakeJobRunner(Construct):
    """Runs `jobs` in order on `application` as `job_role`, on `schedule`.

    Exposes `entry_point` (the asset every job runs; the stack grants `job_role` read access
    to it), `state_machine` and `schedule_rule`. The state machine may start, poll and cancel
    job runs of this application only, and pass `job_role`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        application: emrs.CfnApplication,
        job_role: iam.IRole,
        entry_point: Path,
        jobs: Sequence[SparkJob],
        run_name_prefix: str,
        log_uri: str,
        schedule: events.Schedule,
        schedule_description: str,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.entry_point = s3_assets.Asset(self, "SparkEntryPoint", path=str(entry_point))
        start = sfn.Pass(self, "Start")
        previous: Any = start
        for job in jobs:
            step = sfn.CustomState(
                self,
                f"Run{job.name.capitalize()}",
                state_json={
                    "Type": "Task",
                    "Resource": "arn:aws:states:::emr-serverless:startJobRun.sync",
                    "Parameters": {
                        "ApplicationId": application.attr_application_id,
                        "ExecutionRoleArn": job_role.role_arn,
                        "Name": f"{run_name_prefix}{job.name}",
                        "JobDriver": {
                            "SparkSubmit": {
                                "EntryPoint": self.entry_point.s3_object_url,
                                "EntryPointArguments": list(job.arguments),
                                "SparkSubmitParameters": job.spark_submit_parameters,
                            }
                        },
                        "ConfigurationOverrides": {
                            "MonitoringConfiguration": {
                                "S3MonitoringConfiguration": {"LogUri": log_uri}
                            }
                        },
                    },
                    "Retry": [RETRY],
                },
            )
            previous.next(step)
            previous = step
        log_group = logs.LogGroup(
            self,
            "LakeRunLogs",
            retention=log_retention(log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "LakeRun",
            definition_body=sfn.DefinitionBody.from_chainable(start),
            timeout=RUN_TIMEOUT,
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL),
        )
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "emr-serverless:StartJobRun",
                    "emr-serverless:GetJobRun",
                    "emr-serverless:CancelJobRun",
                ],
                resources=[application.attr_arn, f"{application.attr_arn}/jobruns/*"],
            )
        )
        job_role.grant_pass_role(self.state_machine.role)
        application_id = stack.resolve(stack.get_logical_id(application))
        acknowledge(
            self.state_machine,
            "X-Ray (PutTraceSegments, PutTelemetryRecords, GetSampling*) and the CloudWatch "
            "Logs vended-log delivery actions that Step Functions logging needs do not support "
            "resource-level permissions.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            self.state_machine,
            "A .sync EMR Serverless task polls and cancels the job runs it starts; their ids "
            "exist only at run time, under this one application.",
            f"AwsSolutions-IAM5[Resource::<{application_id}.Arn>/jobruns/*]",
        )
        # The .sync integration watches the job run through this managed EventBridge rule.
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[
                    stack.format_arn(
                        service="events",
                        resource="rule",
                        resource_name="StepFunctionsGetEventsForEMRServerlessJobRule",
                    )
                ],
            )
        )
        self.schedule_rule = events.Rule(
            self,
            "LakeSchedule",
            description=schedule_description,
            schedule=schedule,
            targets=[targets.SfnStateMachine(self.state_machine)],
        )
