"""What IAM checks for one AWS call: the actions, the resources, and what the call implies.

A call is authorized as `<iam prefix>:<action>` on a resource ARN; some calls need more than
their own action, because the service acts with the caller's credentials:

- publishing to an SNS topic or sending to an SQS queue encrypted with a customer key needs
  `kms:GenerateDataKey` and `kms:Decrypt` on that key; reading an object or a secret encrypted
  with one needs `kms:Decrypt`, writing an object `kms:GenerateDataKey`; any item call on a
  DynamoDB table encrypted with one needs `kms:Decrypt` (DynamoDB reads the table's key);
- handing a role to a service (a job's execution role) needs `iam:PassRole` on it;
- creating a Greengrass component version reads its artifacts from S3 (to digest them);
- a SageMaker job runs as its role: it pulls its image from ECR, reads its S3 inputs, writes
  its outputs and its logs (`job_accesses`).

Which key encrypts what comes from the templates (`Cloud`): topics' and queues'
`KmsMasterKeyId`, buckets' default encryption, secrets' `KmsKeyId`, tables'
`SSESpecification`. AWS managed keys
(`alias/aws/...`) need no grant.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from tests.infra.harness.model import Cloud
from tests.infra.harness.policy import Permissions
from tests.infra.harness.recorder import Call

# botocore service name -> IAM action prefix, where they differ.
IAM_PREFIX = {
    "greengrassv2": "greengrass",
    "kinesisanalyticsv2": "kinesisanalytics",
    "stepfunctions": "states",
}
# S3 operations authorized as another action.
S3_ACTIONS = {
    "HeadObject": "GetObject",
    "ListObjectsV2": "ListBucket",
    "ListObjects": "ListBucket",
    "HeadBucket": "ListBucket",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
}
S3_WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
DYNAMODB_TRANSACT = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}


class UnknownCallError(LookupError):
    """The harness does not know which resource this call acts on: teach `resources_of`."""


@dataclass(frozen=True)
class Access:
    """One thing IAM must allow: `action` on `resource`, and why (the call it serves)."""

    action: str
    resource: str
    why: str

    def __str__(self) -> str:
        return f"{self.action} on {self.resource} ({self.why})"


def accesses(call: Call, cloud: Cloud) -> list[Access]:
    """Everything IAM checks for `call`, implied accesses included."""
    prefix = IAM_PREFIX.get(call.service, call.service)
    service = call.service
    params = call.params
    why = str(call)
    found: list[Access] = []

    def add(action: str, resource: str, reason: str = why) -> None:
        found.append(Access(action, resource, reason))

    def keyed(resource: str, *actions: str) -> None:
        key = encryption_key(cloud, resource)
        for action in actions if key else ():
            add(action, key, f"{why} -> the customer key of {resource}")  # type: ignore[arg-type]

    if service == "s3":
        action = "s3:" + S3_ACTIONS.get(call.operation, call.operation)
        bucket = params["Bucket"]
        bucket_arn = f"arn:{cloud.partition}:s3:::{bucket}"
        if call.operation == "CopyObject":
            source = params["CopySource"]
            if isinstance(source, str):
                source_bucket, _, source_key = source.lstrip("/").partition("/")
            else:
                source_bucket, source_key = source["Bucket"], source["Key"]
            source_arn = f"arn:{cloud.partition}:s3:::{source_bucket}/{source_key}"
            add("s3:GetObject", source_arn)
            keyed(f"arn:{cloud.partition}:s3:::{source_bucket}", "kms:Decrypt")
            add("s3:PutObject", f"{bucket_arn}/{params['Key']}")
            keyed(bucket_arn, "kms:GenerateDataKey")
        elif "Key" in params:
            add(action, f"{bucket_arn}/{params['Key']}")
            keyed(
                bucket_arn, "kms:GenerateDataKey" if call.operation in S3_WRITES else "kms:Decrypt"
            )
        else:
            add(action, bucket_arn)
        return found
    if service == "dynamodb" and call.operation in ("TransactWriteItems", "TransactGetItems"):
        for item in params["TransactItems"]:
            ((kind, body),) = item.items()
            add(f"dynamodb:{DYNAMODB_TRANSACT[kind]}", _table(cloud, body["TableName"]))
        return found
    if service == "dynamodb" and call.operation in ("BatchWriteItem", "BatchGetItem"):
        for table in params["RequestItems"]:
            add(f"dynamodb:{call.operation}", _table(cloud, table))
        return found
    for resource in resources_of(call, cloud):
        add(f"{prefix}:{call.operation}", resource)
    # What the call implies.
    if service == "dynamodb" and "TableName" in params:
        # A table encrypted with a customer key: DynamoDB reads the table's key with the
        # caller's kms:Decrypt.
        keyed(_table(cloud, params["TableName"]), "kms:Decrypt")
    if service == "sns" and call.operation in ("Publish", "PublishBatch"):
        keyed(params.get("TopicArn") or params["TargetArn"], "kms:GenerateDataKey", "kms:Decrypt")
    elif service == "sqs" and call.operation in ("SendMessage", "SendMessageBatch"):
        keyed(_queue(cloud, params["QueueUrl"]), "kms:GenerateDataKey", "kms:Decrypt")
    elif service == "sqs" and call.operation == "ReceiveMessage":
        keyed(_queue(cloud, params["QueueUrl"]), "kms:Decrypt")
    elif service == "secretsmanager" and call.operation == "GetSecretValue":
        keyed(_secret(cloud, params["SecretId"]), "kms:Decrypt")
    elif service == "emr-serverless" and call.operation == "StartJobRun":
        add("iam:PassRole", params["executionRoleArn"], f"{why} -> the job's execution role")
    elif service == "sagemaker" and call.operation in ("CreateProcessingJob", "CreateTrainingJob"):
        add("iam:PassRole", params["RoleArn"], f"{why} -> the job's execution role")
        if params.get("Tags"):
            add("sagemaker:AddTags", resources_of(call, cloud)[0], f"{why} -> its tags")
    elif service == "greengrassv2" and call.operation == "CreateComponentVersion":
        recipe = json.loads(params["inlineRecipe"])
        for manifest in recipe.get("Manifests", []):
            for artifact in manifest.get("Artifacts", []):
                url = urlparse(artifact["URI"])
                object_arn = f"arn:{cloud.partition}:s3:::{url.netloc}{url.path}"
                reason = f"{why} -> Greengrass digests the artifact {artifact['URI']}"
                add("s3:GetObject", object_arn, reason)
                keyed(f"arn:{cloud.partition}:s3:::{url.netloc}", "kms:Decrypt")
    return found


def resources_of(call: Call, cloud: Cloud) -> list[str]:
    """The resource ARNs IAM evaluates for the call's own action."""
    params = call.params
    arn = cloud.arn
    service, operation = call.service, call.operation
    if service == "sns":
        return [params.get("TopicArn") or params["TargetArn"]]
    if service == "sqs":
        return [_queue(cloud, params["QueueUrl"])]
    if service == "dynamodb":
        return [_table(cloud, params["TableName"])]
    if service == "kinesis":
        if "ConsumerARN" in params:  # SubscribeToShard, DescribeStreamConsumer by ARN
            return [params["ConsumerARN"]]
        if "ConsumerName" in params:  # DescribeStreamConsumer by stream and name: the consumer
            consumer = cloud.find(
                "AWS::Kinesis::StreamConsumer", ConsumerName=params["ConsumerName"]
            )
            return [cloud.attributes(consumer)["ConsumerARN"]]
        stream = params.get("StreamARN") or arn("kinesis", f"stream/{params['StreamName']}")
        return [stream]
    if service == "secretsmanager":
        return [_secret(cloud, params["SecretId"])]
    if service == "cloudwatch" and operation == "PutMetricData":
        return ["*"]
    if service == "greengrassv2" and operation == "CreateComponentVersion":
        name = json.loads(params["inlineRecipe"])["ComponentName"]
        return [arn("greengrass", f"components:{name}")]
    if service == "sagemaker":
        return [_sagemaker_resource(cloud, operation, params)]
    if service == "emr-serverless":
        application = arn("emr-serverless", f"/applications/{params['applicationId']}")
        if "jobRunId" in params:
            return [f"{application}/jobruns/{params['jobRunId']}"]
        return [application]
    if service == "codebuild":
        if operation == "StartBuild":
            return [arn("codebuild", f"project/{params['projectName']}")]
        return [arn("codebuild", f"project/{build.split(':')[0]}") for build in params["ids"]]
    if service == "kinesisanalyticsv2":
        return [arn("kinesisanalytics", f"application/{params['ApplicationName']}")]
    if service == "events":
        return [arn("events", f"rule/{params.get('Name') or params['Rule']}")]
    if service == "redshift-serverless" and "namespaceName" in params:
        for namespace in cloud.resources("AWS::RedshiftServerless::Namespace"):
            if cloud.name(namespace) == params["namespaceName"]:
                return [cloud.attributes(namespace)["Namespace.NamespaceArn"]]
        raise UnknownCallError(f"no namespace {params['namespaceName']} in the templates")
    if service == "ecr" and operation == "GetAuthorizationToken":
        return ["*"]
    if service == "ecr":
        return [arn("ecr", f"repository/{params['repositoryName']}")]
    if service == "logs":
        return [arn("logs", f"log-group:{params['logGroupName']}:*")]
    raise UnknownCallError(f"no resource rule for {call}")


def _sagemaker_resource(cloud: Cloud, operation: str, params: dict[str, Any]) -> str:
    arn = cloud.arn
    if "ModelPackageName" in params:  # an ARN, or a name in a group
        name = params["ModelPackageName"]
        return name if name.startswith("arn:") else arn("sagemaker", f"model-package/{name}")
    if operation == "CreateModelPackage":
        return arn("sagemaker", f"model-package/{params['ModelPackageGroupName'].lower()}/1")
    for key, kind in (
        ("ProcessingJobName", "processing-job"),
        ("TrainingJobName", "training-job"),
        ("PipelineName", "pipeline"),
        ("ModelPackageGroupName", "model-package-group"),
    ):
        if key in params:
            return arn("sagemaker", f"{kind}/{params[key].lower()}")
    raise UnknownCallError(f"no resource rule for sagemaker.{operation}")


def _queue(cloud: Cloud, url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return cloud.arn("sqs", name)


def _table(cloud: Cloud, name: str) -> str:
    return name if name.startswith("arn:") else cloud.arn("dynamodb", f"table/{name}")


def _secret(cloud: Cloud, secret_id: str) -> str:
    if secret_id.startswith("arn:"):
        return secret_id
    for secret in cloud.resources("AWS::SecretsManager::Secret"):
        if cloud.name(secret) == secret_id:
            return cloud.attributes(secret)["Ref"]
    return cloud.arn("secretsmanager", f"secret:{secret_id}")


def encryption_key(cloud: Cloud, resource_arn: str) -> str | None:
    """The customer managed KMS key that encrypts the topic, queue, bucket or secret, from
    the templates; None for unencrypted or AWS managed keys."""
    for kind, key_property in (
        ("AWS::SNS::Topic", "KmsMasterKeyId"),
        ("AWS::SQS::Queue", "KmsMasterKeyId"),
        ("AWS::SecretsManager::Secret", "KmsKeyId"),
    ):
        for resource in cloud.resources(kind):
            attributes = cloud.attributes(resource)
            if resource_arn in (attributes.get("Arn"), attributes.get("Ref")):
                return _key_arn(
                    cloud, cloud.resolve(resource.stack, resource.properties.get(key_property))
                )
    for table in cloud.resources("AWS::DynamoDB::Table"):
        if cloud.attributes(table)["Arn"] == resource_arn:
            sse = cloud.resolve(table.stack, table.properties.get("SSESpecification", {}))
            return _key_arn(cloud, sse.get("KMSMasterKeyId")) if sse.get("SSEEnabled") else None
    for bucket in cloud.resources("AWS::S3::Bucket"):
        if cloud.attributes(bucket)["Arn"] == resource_arn:
            encryption = cloud.resolve(bucket.stack, bucket.properties.get("BucketEncryption", {}))
            for rule in encryption.get("ServerSideEncryptionConfiguration", []):
                default = rule.get("ServerSideEncryptionByDefault", {})
                if default.get("SSEAlgorithm") == "aws:kms":
                    return _key_arn(cloud, default.get("KMSMasterKeyID"))
    return None


def _key_arn(cloud: Cloud, key: Any) -> str | None:
    if not key or str(key).startswith("alias/aws/"):
        return None
    key = str(key)
    if key.startswith("arn:") and ":key/" in key:
        return key
    if key.startswith("alias/") or ":alias/" in key:
        alias_name = key.split(":", 5)[-1]
        for alias in cloud.resources("AWS::KMS::Alias"):
            if cloud.name(alias) == alias_name:
                return _key_arn(cloud, cloud.resolve(alias.stack, alias.properties["TargetKeyId"]))
        return None
    return cloud.arn("kms", f"key/{key}")


def denied(permissions: Permissions, needed: Iterable[Access]) -> list[Access]:
    """The accesses `permissions` does not allow."""
    return [access for access in needed if not permissions.allows(access.action, access.resource)]
