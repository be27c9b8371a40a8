"""Least-privilege grants with exact actions, and cdk-nag acknowledgments that carry reasons.

CDK's `grant_*` helpers use action wildcards (`s3:GetObject*`, `kms:GenerateDataKey*`) and
resource ARNs that cdk-nag reports under hashed logical ids. Lake access is granted here with
exact actions on deterministic bucket names instead, so the only wildcard left is "any object
in this bucket (or prefix)", acknowledged once per grant with the reason.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Aws, RemovalPolicy, Stack, Token, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import IConstruct

from config.environments import Environment

# The construct id CDK gives the singleton provider function of AwsCustomResource (one per stack).
AWS_CUSTOM_RESOURCE_SINGLETON = "AWS679f53fac002430cb0da5b7982bd2287"
READ_ACTIONS = ("s3:GetObject", "s3:GetObjectVersion")
WRITE_ACTIONS = ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
LIST_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation")


def acknowledge(scope: IConstruct, reason: str, *finding_ids: str) -> None:
    """Acknowledge cdk-nag findings on `scope` and its children, each with the same reason.

    A finding names the account and region as `<AWS::AccountId>` and `<AWS::Region>` while the
    stack is environment-agnostic, and literally once the stack is pinned to them (a deploy, the
    delivery pipeline): each id is acknowledged in both forms."""
    stack = Stack.of(scope)
    literal = [
        (placeholder, value)
        for placeholder, value in (
            ("<AWS::AccountId>", stack.account),
            ("<AWS::Region>", stack.region),
        )
        if not Token.is_unresolved(value)
    ]
    ids = list(finding_ids)
    for finding_id in finding_ids:
        pinned = finding_id
        for placeholder, value in literal:
            pinned = pinned.replace(placeholder, value)
        ids.append(pinned)
    Validations.of(scope).acknowledge(
        *(Acknowledgment(id=finding_id, reason=reason) for finding_id in dict.fromkeys(ids))
    )


# What a Lambda function in a VPC does with its network interfaces (no resource-level
# permissions: the statement is on "*", which each caller acknowledges with its own reason).
VPC_NETWORK_INTERFACE_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)


def allow_vpc_network_interfaces(role: iam.IRole) -> None:
    """Let the VPC function running as `role` create and remove its network interfaces."""
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=list(VPC_NETWORK_INTERFACE_ACTIONS), resources=["*"])
    )


def data_removal_policy(env_config: Environment) -> RemovalPolicy:
    """What deleting a stack does to a resource that holds data, or the key or secret that
    opens it: prod (`keep_data_on_delete`) retains it, dev and staging delete it, so that a
    destroyed environment deploys again under the same fixed names."""
    return RemovalPolicy.RETAIN if env_config.keep_data_on_delete else RemovalPolicy.DESTROY


def bucket_name(prefix: str, layer: str) -> str:
    """`iiot-dev-bronze-<account>-<region>`: unique per account and region, and known to every
    stack without a cross-stack reference."""
    return f"{prefix}-{layer}-{Aws.ACCOUNT_ID}-{Aws.REGION}"


def _rendered(prefix: str, layer: str) -> str:
    """How cdk-nag prints the bucket's ARN (pseudo parameters as <AWS::...>)."""
    return f"arn:<AWS::Partition>:s3:::{prefix}-{layer}-<AWS::AccountId>-<AWS::Region>"


def grant_bucket(
    principal: iam.IGrantable,
    ack_scope: IConstruct,
    *,
    prefix: str,
    layer: str,
    write: bool,
    key: kms.IKey | None = None,
    path: str = "",
    why: str,
) -> None:
    """Read (and write) the objects under `path` of a lake bucket, list the bucket, and use
    its KMS key; acknowledge the object wildcard with `why`."""
    stack = Stack.of(ack_scope)
    name = bucket_name(prefix, layer)
    bucket_arn = stack.format_arn(service="s3", region="", account="", resource=name)
    actions = READ_ACTIONS + (WRITE_ACTIONS if write else ())
    principal.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(actions=list(actions), resources=[f"{bucket_arn}/{path}*"])
    )
    principal.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(actions=list(LIST_ACTIONS), resources=[bucket_arn])
    )
    if key is not None:
        key_actions = ["kms:Decrypt"] + (["kms:Encrypt", "kms:GenerateDataKey"] if write else [])
        principal.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=key_actions, resources=[key.key_arn])
        )
    acknowledge(
        ack_scope,
        f"Object-level access to the {layer} bucket{f' under {path}' if path else ''}: {why}. "
        "The object keys are created at run time, so the resource is the key space "
        f"{f'under {path}' if path else 'of the bucket'}, with exact actions only.",
        f"AwsSolutions-IAM5[Resource::{_rendered(prefix, layer)}/{path}*]",
    )
