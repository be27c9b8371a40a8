"""Container images built in the cloud while the stack deploys (no Docker engine here).

The build context is assembled at synth, on this machine: the Dockerfile, plus an `app/` folder
holding the project's packages and their dependencies installed by uv for the image's platform
and Python, pinned by constraints.txt (the same wheels the tests run against). The Dockerfile
only adds what pip cannot: the interpreter, system packages, and a `.pth` file naming `app/`.

deploy-time-build's ContainerImageBuild uploads the context as an asset, runs `docker build` in
a CodeBuild project during `cdk deploy`, pushes the image to this construct's repository tagged
with the context's hash and only then completes, so the resources that name `image_uri` are
created after the image exists. An unchanged context is not rebuilt.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from aws_cdk import CfnElement, RemovalPolicy, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from cdklabs.deploy_time_build import ContainerImageBuild
from constructs import Construct, IConstruct

from stacks.constructs.access import acknowledge
from stacks.constructs.python_bundle import (
    BUNDLE_CACHE,
    LocalPythonBundling,
    source_hash,
    staged_once,
)

# Finished contexts by content hash, next to the bundle cache (inside cdk.out: git ignores it).
CONTEXTS = BUNDLE_CACHE.parent / ".image-contexts"
Architecture = Literal["x86_64", "arm64"]
_TARGETS: dict[Architecture, tuple[str, ecr_assets.Platform]] = {
    "x86_64": ("x86_64-manylinux_2_28", ecr_assets.Platform.LINUX_AMD64),
    "arm64": ("aarch64-manylinux_2_28", ecr_assets.Platform.LINUX_ARM64),
}
# deploy-time-build's custom-resource handlers and image-build projects are one per stack
# (singletons, created at the stack's root); these are the prefixes of their construct ids.
_SINGLETON_HANDLERS = ("DeployTimeBuildCustomResourceHandler", "NodejsBuildCustomResourceHandler")
_SINGLETON_IMAGE_PROJECT = "ContainerImageBuild"
# What CodeBuild's own grants look like to cdk-nag (the library's asset and log grants).
_CDK_ASSETS = "arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/*"
_READ_WILDCARDS = ("s3:GetBucket*", "s3:GetObject*", "s3:List*")
_BUILD_PROJECT_GRANTS = (
    "Like every CodeBuild project, it reads its source zip from the CDK asset bucket (CDK's "
    "read grant, with action wildcards) and writes its own log group and report groups, named "
    "after the generated project. CodeBuild encrypts its transient build output with the AWS "
    "managed S3 key (the library's project has no customer-key option); nothing is kept there."
)


def stage_context(
    name: str,
    *,
    dockerfile: Path,
    copies: Sequence[tuple[Path, str]],
    requirements: Sequence[str],
    architecture: Architecture,
    python_version: str,
    files: Mapping[str, str] | None = None,
) -> Path:
    """The build context `CONTEXTS/<name>-<hash>/` (Dockerfile + app/), built once per hash."""
    uv_platform, _ = _TARGETS[architecture]
    files = dict(files or {})
    content_hash = source_hash(
        [*copies, (dockerfile, "")],
        requirements,
        uv_platform,
        python_version,
        *(f"{path}={text}" for path, text in sorted(files.items())),
    )
    bundling = LocalPythonBundling(
        copies=copies,
        requirements=requirements,
        platform=uv_platform,
        python_version=python_version,
        files=files,
    )

    def build(partial: Path) -> None:
        bundling.bundle(partial / "app")
        # Console scripts of the dependencies carry this machine's interpreter path: useless there.
        shutil.rmtree(partial / "app" / "bin", ignore_errors=True)
        shutil.copy2(dockerfile, partial / "Dockerfile")

    return staged_once(CONTEXTS / f"{name}-{content_hash[:24]}", build)


class DeployTimeImage(Construct):
    """An ECR repository and the image built from `context` into it during deployment."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        repository_name: str,
        context: Path,
        architecture: Architecture,
        keep_images: bool,
        build_args: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        _, platform = _TARGETS[architecture]
        self.repository = ecr.Repository(
            self,
            "Repository",
            repository_name=repository_name,
            image_scan_on_push=True,
            encryption=ecr.RepositoryEncryption.KMS,
            lifecycle_rules=[ecr.LifecycleRule(max_image_count=10)],
            removal_policy=RemovalPolicy.RETAIN if keep_images else RemovalPolicy.DESTROY,
            empty_on_delete=not keep_images,
        )
        build = ContainerImageBuild(
            self,
            "Build",
            directory=str(context),
            repository=self.repository,
            platform=platform,
            build_args=dict(build_args or {}),
        )
        self.image_uri = build.image_uri
        acknowledge_deploy_time_build(Stack.of(self))


def acknowledge_build_project(project: IConstruct, reason: str, *more: str) -> None:
    """cdk-nag findings every deploy-time-build CodeBuild project has, with `reason`: its log
    group and report groups are named after the generated project, it reads its source from the
    CDK asset bucket (CDK's read grant, with action wildcards), and CodeBuild encrypts its
    short-lived build output with the account's S3 key rather than a customer key."""
    cfn_project = project.node.default_child
    assert isinstance(cfn_project, CfnElement)
    logical_id = Stack.of(project).resolve(cfn_project.logical_id)
    acknowledge(
        project,
        f"{reason} {_BUILD_PROJECT_GRANTS}",
        "AwsSolutions-CB4",
        f"AwsSolutions-IAM5[Resource::{_CDK_ASSETS}]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:"
        f"log-group:/aws/codebuild/<{logical_id}>:*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:codebuild:<AWS::Region>:"
        f"<AWS::AccountId>:report-group/<{logical_id}>-*]",
        *(f"AwsSolutions-IAM5[Action::{action}]" for action in _READ_WILDCARDS),
        *more,
    )


def acknowledge_deploy_time_build(stack: Stack) -> None:
    """The library's per-stack singletons: the custom-resource handler and the image builder."""
    for child in stack.node.children:
        if child.node.id.startswith(_SINGLETON_HANDLERS):
            acknowledge(
                child,
                "deploy-time-build's custom-resource handler only starts its build job "
                "(codebuild:StartBuild on that one project) and logs with the AWS managed basic "
                "execution policy; its Node.js runtime is the one the library ships it for.",
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AWSLambdaBasicExecutionRole]",
                "AwsSolutions-L1",
            )
        elif child.node.id.startswith(_SINGLETON_IMAGE_PROJECT):
            acknowledge_build_project(
                child,
                "deploy-time-build's image builder runs `docker build` during deployment: it "
                "pulls public base images (AWS managed read-only policy for ECR Public), gets "
                "an ECR login token (ecr:GetAuthorizationToken has no resource-level "
                "permissions) and pushes to this stack's KMS-encrypted repositories only.",
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
                "AmazonElasticContainerRegistryPublicReadOnly]",
                "AwsSolutions-IAM5[Resource::*]",
            )
