"""An S3 bucket that is private, encrypted, TLS-only, logged and tiered by lifecycle rules."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from config.environments import LayerLifecycle


def lifecycle_rules(
    tiers: Mapping[str, LayerLifecycle], *, noncurrent_days: int = 30
) -> list[s3.LifecycleRule]:
    """One rule per key prefix ("" for the whole bucket): the layer's storage tiers, plus
    cleanup of old versions and failed multipart uploads."""
    rules = []
    for prefix, lifecycle in tiers.items():
        transitions = []
        if lifecycle.infrequent_access_after_days is not None:
            transitions.append(
                s3.Transition(
                    storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                    transition_after=Duration.days(lifecycle.infrequent_access_after_days),
                )
            )
        if lifecycle.glacier_after_days is not None:
            transitions.append(
                s3.Transition(
                    storage_class=s3.StorageClass.GLACIER,
                    transition_after=Duration.days(lifecycle.glacier_after_days),
                )
            )
        expiration = (
            Duration.days(lifecycle.expire_after_days)
            if lifecycle.expire_after_days is not None
            else None
        )
        rules.append(
            s3.LifecycleRule(
                id=f"tiers-{prefix.strip('/') or 'all'}",
                prefix=prefix or None,
                transitions=transitions or None,
                expiration=expiration,
                noncurrent_version_expiration=Duration.days(noncurrent_days),
                abort_incomplete_multipart_upload_after=Duration.days(7),
            )
        )
    return rules


class SecureBucket(Construct):
    """A private bucket: KMS (or S3-managed for log targets), TLS 1.2+, versioned, logged;
    `lifecycle` maps key prefixes ("" for all keys) to their storage tiers."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket_name: str,
        lifecycle: Mapping[str, LayerLifecycle],
        keep_on_delete: bool,
        key: kms.IKey | None = None,
        access_logs: s3.IBucket | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=bucket_name,
            # S3 server access logs can only be delivered to an SSE-S3 bucket.
            encryption=s3.BucketEncryption.KMS if key else s3.BucketEncryption.S3_MANAGED,
            encryption_key=key,
            bucket_key_enabled=bool(key),
            enforce_ssl=True,
            minimum_tls_version=1.2,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            # ACLs off; log delivery is granted by bucket policy (cdk.json feature flag).
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix=f"s3/{construct_id.lower()}/" if access_logs else None,
            lifecycle_rules=lifecycle_rules(lifecycle),
            removal_policy=RemovalPolicy.RETAIN if keep_on_delete else RemovalPolicy.DESTROY,
        )
