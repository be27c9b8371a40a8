"""A Python Lambda function of this repository, bundled locally with the `iiot` core.

The function gets its own role (no managed policies), a log group with the environment's
retention, X-Ray tracing and arm64 (Graviton: cheaper per GB-second for this I/O-bound code).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from aws_cdk import AssetHashType, Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.artifacts import ROOT
from stacks.constructs.access import allow_vpc_network_interfaces
from stacks.constructs.python_bundle import (
    LocalPythonBundling,
    local_bundling,
    project_requirements,
    source_hash,
)

RUNTIME = lambda_.Runtime.PYTHON_3_14
PYTHON_VERSION = "3.14"
ARCHITECTURE = lambda_.Architecture.ARM_64
PLATFORM = "aarch64-manylinux_2_28"  # Amazon Linux 2023 (glibc 2.34) runs these
# The core's command-line dependencies are of no use in a function; boto3 is in the runtime.
_NOT_BUNDLED = {"typer", "rich", "boto3"}
# Pulled in by aws-xray-sdk, provided by the Lambda Python runtime (about 30 MB).
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")


def lambda_requirements() -> list[str]:
    """The core's dependencies and the `lambdas` extra from pyproject.toml, minus the above."""
    return project_requirements("lambdas", leave_out=_NOT_BUNDLED)


class PythonFunction(Construct):
    """`lambdas/<name>/` + `iiot/` + the catalog + dependencies; entry `handler.handler`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        function_dir: Path,
        description: str,
        environment: Mapping[str, str],
        log_retention_days: int,
        timeout: Duration,
        memory_size: int = 256,
        vpc: ec2.IVpc | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        security_groups: Sequence[ec2.ISecurityGroup] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        requirements = lambda_requirements()
        # The bundle mirrors the repository: `lambdas.<name>.handler` imports its package by
        # its full name, and the `iiot` core finds the metric catalog at config/metrics.yaml.
        copies = [
            (ROOT / "lambdas" / "__init__.py", "lambdas"),
            (ROOT / "lambdas" / "shared", "lambdas"),
            (function_dir, "lambdas"),
            (ROOT / "iiot", ""),
            (ROOT / "config" / "metrics.yaml", "config"),
        ]
        content_hash = source_hash(
            copies, requirements, PLATFORM, PYTHON_VERSION, *RUNTIME_PROVIDED
        )
        bundling = LocalPythonBundling(
            copies=copies,
            requirements=requirements,
            platform=PLATFORM,
            python_version=PYTHON_VERSION,
            exclude=RUNTIME_PROVIDED,
            cache_key=f"lambda-{content_hash}",
        )
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention(log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{description} (function role)",
        )
        self.log_group.grant_write(self.role)
        if vpc is not None:
            # CDK adds the network-interface permissions only to a role it makes itself, and
            # CreateFunction refuses a VPC function whose role lacks them.
            allow_vpc_network_interfaces(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            description=description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=f"lambdas.{function_dir.name}.handler.handler",
            code=lambda_.Code.from_asset(
                str(function_dir),
                asset_hash_type=AssetHashType.CUSTOM,
                asset_hash=content_hash,
                bundling=local_bundling(bundling),
            ),
            environment=dict(environment),
            timeout=timeout,
            memory_size=memory_size,
            tracing=lambda_.Tracing.ACTIVE,
            role=self.role,
            log_group=self.log_group,
            vpc=vpc,
            vpc_subnets=vpc_subnets,
            security_groups=list(security_groups) if security_groups else None,
        )


_RETENTION = {
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    731: logs.RetentionDays.TWO_YEARS,
}


def log_retention(days: int) -> logs.RetentionDays:
    """The shortest CloudWatch Logs retention that keeps logs at least `days`."""
    return next((value for limit, value in _RETENTION.items() if limit >= days), _RETENTION[731])
