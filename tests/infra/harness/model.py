"""The synthesized templates of one environment as one cloud, with every value resolved.

A template says `{"Ref": "AlertTopic8A3A5B7C"}` or `{"Fn::ImportValue": "iiot-dev-lake:..."}`
where a running function sees `arn:aws:sns:eu-west-1:123456789012:iiot-dev-alerts`. `Cloud`
resolves the intrinsic functions CloudFormation would (Ref, Fn::GetAtt, Fn::Join, Fn::Sub,
Fn::Select, Fn::Split, Fn::ImportValue across the stacks, Fn::GetAZs, pseudo parameters) to the
values the resources get in a placeholder account and region:

- a resource with a physical name in its template (`TopicName`, `BucketName`, ...) gets it;
- one without gets a placeholder name made from its stack and logical id, the same every time;
- ARNs, URLs and ids follow from the name, in each service's format.

The same resolution serves the functions' environment variables, the role policies and the
state machine definitions, so a runtime run against resources created under these names meets
the ARNs its policies name. A runtime may bind a resource to what the fake cloud really made
(`bind`: moto chooses secrets' ARN suffixes and applications' ids).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCOUNT = "123456789012"
REGION = "eu-west-1"
PARTITION = "aws"

# Properties that hold a resource's physical name, by type.
NAME_PROPERTY = {
    "AWS::S3::Bucket": "BucketName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Kinesis::Stream": "Name",
    "AWS::Kinesis::StreamConsumer": "ConsumerName",
    "AWS::IAM::Role": "RoleName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::StepFunctions::StateMachine": "StateMachineName",
    "AWS::CodeBuild::Project": "Name",
    "AWS::EMRServerless::Application": "Name",
    "AWS::SageMaker::ModelPackageGroup": "ModelPackageGroupName",
    "AWS::SageMaker::Pipeline": "PipelineName",
    "AWS::ECR::Repository": "RepositoryName",
    "AWS::KinesisAnalyticsV2::Application": "ApplicationName",
    "AWS::Timestream::InfluxDBInstance": "Name",
    "AWS::KinesisFirehose::DeliveryStream": "DeliveryStreamName",
    "AWS::IoT::TopicRule": "RuleName",
    "AWS::IoT::Policy": "PolicyName",
    "AWS::IoT::ThingType": "ThingTypeName",
    "AWS::IoT::ThingGroup": "ThingGroupName",
    "AWS::IoT::RoleAlias": "RoleAlias",
    "AWS::Events::Rule": "Name",
    "AWS::CloudWatch::Dashboard": "DashboardName",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::KMS::Alias": "AliasName",
    "AWS::SecretsManager::Secret": "Name",
    "AWS::RedshiftServerless::Namespace": "NamespaceName",
    "AWS::RedshiftServerless::Workgroup": "WorkgroupName",
    "AWS::Glue::Database": "DatabaseInput.Name",
    "AWS::Glue::Table": "TableInput.Name",
    "AWS::GreengrassV2::Deployment": "DeploymentName",
}
# Types whose names S3-like rules keep lower case.
_LOWER_CASE = {"AWS::S3::Bucket", "AWS::ECR::Repository", "AWS::EMRServerless::Application"}


class UnresolvedError(KeyError):
    """A value refers to something the templates do not define."""


@dataclass
class Resource:
    stack: str
    logical_id: str
    type: str
    properties: dict[str, Any]
    body: dict[str, Any]


@dataclass
class Cloud:
    """Every stack of one environment: stack name -> template."""

    templates: Mapping[str, dict[str, Any]]
    account: str = ACCOUNT
    region: str = REGION
    partition: str = PARTITION
    bindings: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_paths(cls, paths: Mapping[str, Path], **kwargs: Any) -> Cloud:
        return cls({name: json.loads(path.read_text()) for name, path in paths.items()}, **kwargs)

    def __post_init__(self) -> None:
        self._exports: dict[str, tuple[str, Any]] = {}
        for stack, template in self.templates.items():
            for output in template.get("Outputs", {}).values():
                export = output.get("Export", {}).get("Name")
                if export is not None:
                    self._exports[self._plain(stack, export)] = (stack, output["Value"])

    # --- resources ---------------------------------------------------------------------------

    def resource(self, stack: str, logical_id: str) -> Resource:
        try:
            body = self.templates[stack]["Resources"][logical_id]
        except KeyError as error:
            raise UnresolvedError(f"{stack} has no resource {logical_id}") from error
        return Resource(stack, logical_id, body["Type"], body.get("Properties", {}), body)

    def resources(self, kind: str | None = None) -> list[Resource]:
        """Every resource (of `kind`), in stack and logical-id order."""
        found = []
        for stack in sorted(self.templates):
            for logical_id in sorted(self.templates[stack]["Resources"]):
                resource = self.resource(stack, logical_id)
                if kind is None or resource.type == kind:
                    found.append(resource)
        return found

    def find(self, kind: str, **where: Any) -> Resource:
        """The one resource of `kind` whose resolved properties contain `where`."""
        matches = [
            r
            for r in self.resources(kind)
            if all(
                self.resolve(r.stack, r.properties.get(key)) == value
                for key, value in where.items()
            )
        ]
        if len(matches) != 1:
            raise UnresolvedError(f"{len(matches)} resources of {kind} match {where}")
        return matches[0]

    def bind(self, stack: str, logical_id: str, **attributes: str) -> None:
        """Use what the fake cloud made for this resource: `ref=...`, `arn=...`, `name=...`."""
        self.bindings.setdefault((stack, logical_id), {}).update(attributes)

    def name(self, resource: Resource) -> str:
        """The physical name: the template's, or a stable placeholder."""
        bound = self.bindings.get((resource.stack, resource.logical_id), {})
        if "name" in bound:
            return bound["name"]
        path = NAME_PROPERTY.get(resource.type)
        if path is not None:
            value: Any = resource.properties
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                return str(self.resolve(resource.stack, value))
        digest = hashlib.sha256(f"{resource.stack}/{resource.logical_id}".encode()).hexdigest()
        placeholder = f"{resource.stack}-{resource.logical_id}"[:48] + "-" + digest[:8]
        return placeholder.lower() if resource.type in _LOWER_CASE else placeholder

    def arn(
        self, service: str, resource: str, *, region: str | None = None, account: str | None = None
    ) -> str:
        return (
            f"arn:{self.partition}:{service}:{self.region if region is None else region}:"
            f"{self.account if account is None else account}:{resource}"
        )

    def attributes(self, resource: Resource) -> dict[str, str]:
        """Ref and the GetAtt attributes of a resource, in its service's formats."""
        name = self.name(resource)
        kind = resource.type
        arn = self.arn
        attrs: dict[str, str] = {"Ref": name}
        if kind == "AWS::S3::Bucket":
            attrs |= {
                "Arn": f"arn:{self.partition}:s3:::{name}",
                "DomainName": f"{name}.s3.amazonaws.com",
            }
        elif kind == "AWS::SNS::Topic":
            topic = arn("sns", name)
            attrs |= {"Ref": topic, "TopicArn": topic, "TopicName": name}
        elif kind == "AWS::SQS::Queue":
            url = f"https://sqs.{self.region}.amazonaws.com/{self.account}/{name}"
            attrs |= {"Ref": url, "QueueUrl": url, "Arn": arn("sqs", name), "QueueName": name}
        elif kind == "AWS::DynamoDB::Table":
            attrs |= {"Arn": arn("dynamodb", f"table/{name}")}
        elif kind == "AWS::Kinesis::Stream":
            attrs |= {"Arn": arn("kinesis", f"stream/{name}")}
        elif kind == "AWS::Kinesis::StreamConsumer":
            # Kinesis appends the registration time; the fake cloud binds the one it made.
            stream = self.resolve(resource.stack, resource.properties["StreamARN"])
            attrs |= {
                "ConsumerARN": f"{stream}/consumer/{name}:1767571200",
                "ConsumerName": name,
                "StreamARN": stream,
            }
        elif kind == "AWS::KMS::Key":
            key_id = str(_uuid(f"{resource.stack}/{resource.logical_id}"))
            attrs |= {"Ref": key_id, "KeyId": key_id, "Arn": arn("kms", f"key/{key_id}")}
        elif kind == "AWS::IAM::Role":
            attrs |= {"Arn": arn("iam", f"role/{name}", region=""), "RoleId": f"AROA{name[:16]}"}
        elif kind == "AWS::Lambda::Function":
            attrs |= {"Arn": arn("lambda", f"function:{name}")}
        elif kind == "AWS::Logs::LogGroup":
            attrs |= {"Arn": arn("logs", f"log-group:{name}:*")}
        elif kind == "AWS::SecretsManager::Secret":
            secret = arn("secretsmanager", f"secret:{name}-AbCdEf")
            attrs |= {"Ref": secret, "Id": secret}
        elif kind == "AWS::StepFunctions::StateMachine":
            machine = arn("states", f"stateMachine:{name}")
            attrs |= {"Ref": machine, "Arn": machine, "Name": name}
        elif kind == "AWS::CodeBuild::Project":
            attrs |= {"Arn": arn("codebuild", f"project/{name}")}
        elif kind == "AWS::EMRServerless::Application":
            application_id = "00" + hashlib.sha256(name.encode()).hexdigest()[:14]
            attrs |= {
                "Ref": application_id,
                "ApplicationId": application_id,
                "Arn": arn("emr-serverless", f"/applications/{application_id}"),
            }
        elif kind == "AWS::SageMaker::ModelPackageGroup":
            group = arn("sagemaker", f"model-package-group/{name}")
            attrs |= {"Ref": group, "ModelPackageGroupArn": group}
        elif kind == "AWS::SageMaker::Pipeline":
            attrs |= {"Arn": arn("sagemaker", f"pipeline/{name}")}
        elif kind == "AWS::ECR::Repository":
            attrs |= {
                "Arn": arn("ecr", f"repository/{name}"),
                "RepositoryUri": f"{self.account}.dkr.ecr.{self.region}.amazonaws.com/{name}",
            }
        elif kind == "AWS::KinesisAnalyticsV2::Application":
            attrs |= {"Arn": arn("kinesisanalytics", f"application/{name}")}
        elif kind == "AWS::Timestream::InfluxDBInstance":
            attrs |= {
                "Arn": arn("timestream-influxdb", f"db-instance/{name}"),
                "Endpoint": f"{name}.{self.region}.timestream-influxdb.amazonaws.com",
                "Id": name,
            }
        elif kind == "AWS::IoT::RoleAlias":
            attrs |= {"RoleAliasArn": arn("iot", f"rolealias/{name}")}
        elif kind == "AWS::IoT::ThingGroup":
            attrs |= {"Arn": arn("iot", f"thinggroup/{name}")}
        elif kind == "AWS::Events::Rule":
            attrs |= {"Arn": arn("events", f"rule/{name}")}
        elif kind == "AWS::GreengrassV2::ComponentVersion":
            recipe = self.resolve(resource.stack, resource.properties.get("InlineRecipe", "{}"))
            parsed = json.loads(recipe) if isinstance(recipe, str) else {}
            component = parsed.get("ComponentName", name)
            attrs |= {
                "ComponentName": component,
                "ComponentVersion": parsed.get("ComponentVersion", "1.0.0"),
                "Arn": arn(
                    "greengrass",
                    f"components:{component}:versions:{parsed.get('ComponentVersion', '1.0.0')}",
                ),
            }
        elif kind == "AWS::RedshiftServerless::Namespace":
            namespace_id = str(_uuid(name))
            attrs |= {
                "Namespace.NamespaceArn": arn("redshift-serverless", f"namespace/{namespace_id}"),
                "Namespace.NamespaceName": name,
                "Namespace.NamespaceId": namespace_id,
            }
        elif kind == "AWS::RedshiftServerless::Workgroup":
            workgroup_id = str(_uuid(name))
            attrs |= {
                "Workgroup.WorkgroupArn": arn("redshift-serverless", f"workgroup/{workgroup_id}"),
                "Workgroup.WorkgroupName": name,
                "Workgroup.WorkgroupId": workgroup_id,
            }
        elif kind.startswith("Custom::"):
            attrs |= {"ImageTag": "tag-" + hashlib.sha256(name.encode()).hexdigest()[:12]}
        attrs.setdefault("Arn", arn(kind.split("::")[1].lower(), name))
        attrs.update(self.bindings.get((resource.stack, resource.logical_id), {}))
        return attrs

    # --- intrinsic functions -----------------------------------------------------------------

    def resolve(self, stack: str, value: Any) -> Any:
        """`value` of `stack`'s template with every intrinsic function evaluated."""
        if isinstance(value, list):
            return [self.resolve(stack, item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return self._ref(stack, argument)
            if key == "Fn::GetAtt":
                logical_id, attribute = (
                    argument if isinstance(argument, list) else argument.split(".", 1)
                )
                return self._get_att(stack, logical_id, self.resolve(stack, attribute))
            if key == "Fn::Join":
                separator, parts = argument
                return separator.join(str(part) for part in self.resolve(stack, parts))
            if key == "Fn::Select":
                index, items = argument
                return self.resolve(stack, items)[int(self.resolve(stack, index))]
            if key == "Fn::Split":
                separator, text = argument
                return str(self.resolve(stack, text)).split(separator)
            if key == "Fn::Sub":
                return self._sub(stack, argument)
            if key == "Fn::ImportValue":
                export = self._plain(stack, argument)
                if export not in self._exports:
                    raise UnresolvedError(f"no stack exports {export}")
                source, exported = self._exports[export]
                return self.resolve(source, exported)
            if key == "Fn::GetAZs":
                return [f"{self.region}{zone}" for zone in "abc"]
            if key == "Fn::Base64":
                return self.resolve(stack, argument)
        return {key: self.resolve(stack, item) for key, item in value.items()}

    def _plain(self, stack: str, value: Any) -> str:
        resolved = self.resolve(stack, value)
        assert isinstance(resolved, str), resolved
        return resolved

    def _ref(self, stack: str, name: str) -> Any:
        pseudo = {
            "AWS::AccountId": self.account,
            "AWS::Region": self.region,
            "AWS::Partition": self.partition,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack,
            "AWS::NoValue": None,
        }
        if name in pseudo:
            return pseudo[name]
        parameters = self.templates[stack].get("Parameters", {})
        if name in parameters:
            return parameters[name].get("Default")
        return self.attributes(self.resource(stack, name))["Ref"]

    def _get_att(self, stack: str, logical_id: str, attribute: str) -> str:
        attrs = self.attributes(self.resource(stack, logical_id))
        if attribute not in attrs:
            raise UnresolvedError(f"{stack}/{logical_id} has no attribute {attribute} here")
        return attrs[attribute]

    def _sub(self, stack: str, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        values = {name: self.resolve(stack, value) for name, value in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in values:
                return str(values[name])
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return self._get_att(stack, logical_id, attribute)
            return str(self._ref(stack, name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


def _uuid(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
