"""The resources a runtime needs, created in moto under the names the templates give them.

Call inside `mock_aws()` (tests/infra/test_runtime_permissions.py opens it). Resources whose
identifiers moto chooses itself (a secret's ARN suffix, an application's id) are bound in the
`Cloud`, so that the templates resolve to what moto made.
"""

from __future__ import annotations

import json
from typing import Any

import boto3

from tests.infra.harness.model import Cloud, Resource


def provision(cloud: Cloud, *resources: Resource, secret_value: Any = None) -> None:
    """Create each resource in moto as its template describes it (name, keys)."""
    for resource in resources:
        name = cloud.name(resource)
        props = cloud.resolve(resource.stack, resource.properties)
        kind = resource.type
        if kind == "AWS::SNS::Topic":
            boto3.client("sns").create_topic(Name=name)
        elif kind == "AWS::SQS::Queue":
            boto3.client("sqs").create_queue(QueueName=name)
        elif kind == "AWS::DynamoDB::Table":
            boto3.client("dynamodb").create_table(
                TableName=name,
                KeySchema=props["KeySchema"],
                AttributeDefinitions=props["AttributeDefinitions"],
                BillingMode="PAY_PER_REQUEST",
            )
        elif kind == "AWS::Kinesis::Stream":
            boto3.client("kinesis").create_stream(
                StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"}
            )
        elif kind == "AWS::S3::Bucket":
            boto3.client("s3").create_bucket(
                Bucket=name, CreateBucketConfiguration={"LocationConstraint": cloud.region}
            )
        elif kind == "AWS::SecretsManager::Secret":
            created = boto3.client("secretsmanager").create_secret(
                Name=name, SecretString=json.dumps(secret_value or {})
            )
            cloud.bind(resource.stack, resource.logical_id, Ref=created["ARN"], Id=created["ARN"])
        else:
            raise NotImplementedError(f"provision {kind}")


def bucket(cloud: Cloud, name: str) -> None:
    """A bucket the templates name but do not define (the CDK asset bucket)."""
    boto3.client("s3").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": cloud.region}
    )
