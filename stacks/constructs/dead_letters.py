"""The dead-letter queue every stream-reading Lambda gets: encrypted, TLS-only, kept 14 days."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.constructs.access import acknowledge


def dead_letter_queue(
    scope: Construct, construct_id: str, key: kms.IKey, *, sender: str
) -> sqs.Queue:
    """A KMS-encrypted dead-letter queue; `sender` names what puts messages on it (for cdk-nag)."""
    queue = sqs.Queue(
        scope,
        construct_id,
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=key,
        enforce_ssl=True,
        retention_period=Duration.days(14),
    )
    acknowledge(
        queue,
        f"This queue is the dead-letter queue itself: {sender} sends records it cannot "
        "process to it and the stream mapping sends batches that failed every retry.",
        "AwsSolutions-SQS3",
    )
    return queue
