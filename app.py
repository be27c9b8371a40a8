#!/usr/bin/env python3
"""CDK composition root: every environment's stacks, checked by cdk-nag (AwsSolutions).

Settings that differ per deployment arrive as CDK context `<env>:<setting>` and become typed
settings in config/environments.py (`npx cdk deploy -c prod:alarm_email=ops@example.com ...`).
Each environment is a cdk.Stage pinned to the account and region of its context (`<env>:account`,
`<env>:region`); only the dev sandbox may take CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION.

The delivery pipeline (stacks/pipeline_stack.py, stack `iiot-pipeline`) is added only when its
settings are given (`pipeline:connection_arn`, `pipeline:repository`, ...: config/pipeline.py);
the direct `cdk deploy 'iiot-<env>/*'` works either way.

`IIOT_ENVIRONMENTS=dev,prod` limits the build to some environments (default: all three). It
stays an environment variable of this process, not context, because it is no setting: it
changes no template, only which environments this run builds (`cdk deploy 'iiot-dev/*'`
otherwise builds all three to deploy one, which is slower).
"""

from __future__ import annotations

import os

from aws_cdk import App

from config.environments import ConfigError
from stacks.artifacts import MissingArtifactError
from stacks.environment_stacks import build_app, feature_flags
from stacks.pipeline_stack import build_pipeline


def main() -> None:
    selected = [name for name in os.environ.get("IIOT_ENVIRONMENTS", "").split(",") if name]
    app = App(context=feature_flags())
    try:
        build_app(app, selected or None)
        build_pipeline(app)
    except (ConfigError, MissingArtifactError) as error:
        raise SystemExit(f"app.py: {error}") from error
    app.synth()


if __name__ == "__main__":
    main()
