#!/usr/bin/env python3
"""CDK composition root: every environment's stacks, checked by cdk-nag (AwsSolutions).

`IIOT_ENVIRONMENTS=dev,prod` limits the build to some environments (default: all three).
Account and region come from CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION (set by the CDK CLI).
"""

from __future__ import annotations

import os

from aws_cdk import App

from stacks.artifacts import MissingArtifactError
from stacks.environment_stacks import build_app, feature_flags


def main() -> None:
    selected = [name for name in os.environ.get("IIOT_ENVIRONMENTS", "").split(",") if name]
    app = App(context=feature_flags())
    try:
        build_app(app, selected or None)
    except MissingArtifactError as error:
        raise SystemExit(f"app.py: {error}") from error
    app.synth()


if __name__ == "__main__":
    main()
