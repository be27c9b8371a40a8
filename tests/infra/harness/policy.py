"""A role's effective permissions, taken from the synthesized templates, and IAM's verdict on
one action on one resource.

The statements of a role are its inline policies, every `AWS::IAM::Policy` or
`AWS::IAM::ManagedPolicy` of any stack that attaches to it (a stack may grant another stack's
role through an import), and the AWS managed policies it names, for the few that CDK attaches
(their documented statements are written out below; an unknown one grants nothing here).

Evaluation follows IAM's identity-policy logic: an explicit Deny wins, else some Allow must
match the action (wildcards, case-insensitive) and the resource (wildcards), `NotAction` and
`NotResource` included. Conditions are not evaluated: a statement with a condition counts as
matching, which can only make a check pass that a real condition would fail (the conditions
in these templates narrow `cloudwatch:PutMetricData` to a namespace; tests check them apart).
Resource policies are evaluated for KMS keys only, where CDK grants a role of the key's own
stack in the key policy (a secret's `grantRead`: decrypt via Secrets Manager); the rest of
the key policies delegate to IAM (CDK's default), and the bucket and topic policies only deny
non-TLS access.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.infra.harness.model import Cloud, Resource

# AWS managed policies CDK attaches to roles of this app, as AWS documents them.
MANAGED_POLICIES: dict[str, list[dict[str, Any]]] = {
    "AWSLambdaBasicExecutionRole": [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "*",
        }
    ],
    "AWSLambdaVPCAccessExecutionRole": [
        {
            "Effect": "Allow",
            "Action": [
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "ec2:CreateNetworkInterface",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets",
                "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
            ],
            "Resource": "*",
        }
    ],
}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    not_actions: tuple[str, ...] = ()
    not_resources: tuple[str, ...] = ()
    condition: Any = None
    source: str = ""  # which policy it came from

    @classmethod
    def parse(cls, raw: dict[str, Any], source: str) -> Statement:
        return cls(
            effect=raw["Effect"],
            actions=tuple(_as_list(raw.get("Action"))),
            resources=tuple(str(r) for r in _as_list(raw.get("Resource"))),
            not_actions=tuple(_as_list(raw.get("NotAction"))),
            not_resources=tuple(str(r) for r in _as_list(raw.get("NotResource"))),
            condition=raw.get("Condition"),
            source=source,
        )

    def matches(self, action: str, resource: str) -> bool:
        if self.actions and not any(_action_matches(p, action) for p in self.actions):
            return False
        if self.not_actions and any(_action_matches(p, action) for p in self.not_actions):
            return False
        if self.resources and not any(_resource_matches(p, resource) for p in self.resources):
            return False
        return not (
            self.not_resources and any(_resource_matches(p, resource) for p in self.not_resources)
        )


def _action_matches(pattern: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


def _resource_matches(pattern: str, resource: str) -> bool:
    # IAM wildcards: * any run of characters (across "/" and ":"), ? one character.
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.fullmatch(regex, resource) is not None


@dataclass
class Permissions:
    """A role's statements, with where each came from."""

    role: str
    statements: list[Statement] = field(default_factory=list)
    unknown_managed_policies: list[str] = field(default_factory=list)

    def allows(self, action: str, resource: str) -> bool:
        matching = [s for s in self.statements if s.matches(action, resource)]
        if any(s.effect == "Deny" for s in matching):
            return False
        return any(s.effect == "Allow" for s in matching)

    def actions_granted(self) -> set[str]:
        return {a for s in self.statements if s.effect == "Allow" for a in s.actions}


def role_permissions(cloud: Cloud, role: Resource) -> Permissions:
    """Everything that grants `role` something, across every stack of `cloud`."""
    assert role.type == "AWS::IAM::Role", role.type
    role_name = cloud.name(role)
    permissions = Permissions(role=f"{role.stack}/{role.logical_id}")
    for policy in _as_list(role.properties.get("Policies")):
        document = cloud.resolve(role.stack, policy["PolicyDocument"])
        permissions.statements += _statements(document, f"{role.logical_id} inline")
    for arn in cloud.resolve(role.stack, _as_list(role.properties.get("ManagedPolicyArns"))):
        name = str(arn).rsplit("/", 1)[-1]
        if name in MANAGED_POLICIES:
            permissions.statements += [
                Statement.parse(raw, f"AWS managed {name}") for raw in MANAGED_POLICIES[name]
            ]
        else:
            permissions.unknown_managed_policies.append(str(arn))
    role_arn = cloud.attributes(role)["Arn"]
    for key in cloud.resources("AWS::KMS::Key"):
        document = cloud.resolve(key.stack, key.properties.get("KeyPolicy", {}))
        key_arn = cloud.attributes(key)["Arn"]
        for raw in _as_list(document.get("Statement")):
            principals = _as_list(raw.get("Principal", {}).get("AWS"))
            if role_arn in principals:
                permissions.statements.append(
                    Statement.parse(
                        {**raw, "Resource": key_arn}, f"{key.stack}/{key.logical_id} key policy"
                    )
                )
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for policy in cloud.resources(kind):
            roles = cloud.resolve(policy.stack, _as_list(policy.properties.get("Roles")))
            if role_name in roles:
                document = cloud.resolve(policy.stack, policy.properties["PolicyDocument"])
                permissions.statements += _statements(
                    document, f"{policy.stack}/{policy.logical_id}"
                )
    return permissions


def _statements(document: dict[str, Any], source: str) -> list[Statement]:
    return [Statement.parse(raw, source) for raw in _as_list(document.get("Statement"))]


def roles_assumed_by(cloud: Cloud, service: str) -> Iterable[Resource]:
    """Roles whose trust policy names the service principal `service`."""
    for role in cloud.resources("AWS::IAM::Role"):
        trust = cloud.resolve(role.stack, role.properties.get("AssumeRolePolicyDocument", {}))
        principals = [
            p
            for s in _as_list(trust.get("Statement"))
            for p in _as_list(s.get("Principal", {}).get("Service"))
        ]
        if service in principals:
            yield role
