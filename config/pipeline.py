"""Typed settings of the delivery pipeline (stacks/pipeline_stack.py), from CDK context.

The pipeline is optional: `app.py` adds it only when `pipeline:connection_arn` is given, and
the direct per-environment `cdk deploy 'iiot-<env>/*'` keeps working either way. Its settings
arrive as context keys `pipeline:<setting>` (committed under cdk.json's "context" once chosen,
or `-c pipeline:...` for one command); no account id is written in the code:

- `pipeline:connection_arn`: the CodeConnections (formerly CodeStar Connections) connection
  to GitHub, created and authorized once in the toolchain account's console
  (`arn:aws:codeconnections:<region>:<account>:connection/<id>`, or the older
  `arn:aws:codestar-connections:...` form).
- `pipeline:repository`: `owner/name` of the GitHub repository.
- `pipeline:branch`: the branch whose pushes run the pipeline (default `main`).
- `pipeline:account`, `pipeline:region`: where the pipeline itself runs (the toolchain
  account); default: the connection's account and region.

Every environment the pipeline deploys must be pinned (`<env>:account`, `<env>:region`): a
pipeline cannot deploy to "whatever account the profile names".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config.environments import SUPPORTED_REGIONS, ConfigError

PIPELINE_PREFIX = "pipeline"
PIPELINE_INPUTS = ("connection_arn", "repository", "branch", "account", "region")
_CONNECTION = re.compile(
    r"arn:aws[a-z-]*:(?:codeconnections|codestar-connections):(?P<region>[a-z0-9-]+):"
    r"(?P<account>\d{12}):connection/[0-9a-fA-F-]{36}"
)
_REPOSITORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,38}/[A-Za-z0-9_.-]{1,100}")
# git's ref rules, restricted to what a branch name in this project needs.
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_ACCOUNT = re.compile(r"\d{12}")


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """Where the pipeline's source comes from and where the pipeline runs (see module doc)."""

    connection_arn: str
    repository: str
    branch: str = "main"
    account: str
    region: str

    @property
    def name(self) -> str:
        """The pipeline's stack and CodePipeline name."""
        return "iiot-pipeline"


def pipeline_settings(context: Mapping[str, Any]) -> PipelineSettings | None:
    """The `pipeline:<setting>` values of CDK `context`, validated; None when no
    `pipeline:connection_arn` is given (no pipeline). Raises ConfigError with every problem."""
    values: dict[str, str] = {}
    problems = []
    for key, value in sorted(context.items()):
        scope, _, setting = key.partition(":")
        if scope != PIPELINE_PREFIX:
            continue
        if setting not in PIPELINE_INPUTS:
            problems.append(
                f"context {key!r}: the pipeline settings are {', '.join(PIPELINE_INPUTS)}"
            )
        elif not isinstance(value, str):
            problems.append(f"context {key!r} must be text, got {value!r}")
        elif value:
            values[setting] = value.strip()
    if "connection_arn" not in values:
        if values and not problems:
            problems.append(
                f"context {', '.join(f'pipeline:{k}' for k in sorted(values))} given without "
                "pipeline:connection_arn: the pipeline needs its GitHub connection (create it "
                "in the console under Developer Tools > Connections and authorize it)"
            )
        if problems:
            raise ConfigError("; ".join(problems))
        return None
    connection = _CONNECTION.fullmatch(values["connection_arn"])
    if connection is None:
        problems.append(
            f"pipeline:connection_arn {values['connection_arn']!r} is not a CodeConnections "
            "connection ARN (arn:aws:codeconnections:<region>:<12-digit account>:connection/"
            "<uuid>)"
        )
    repository = values.get("repository")
    if repository is None:
        problems.append("pipeline:repository is required: the GitHub repository as owner/name")
    elif not _REPOSITORY.fullmatch(repository):
        problems.append(f"pipeline:repository {repository!r} must be owner/name")
    branch = values.get("branch", "main")
    if not _BRANCH.fullmatch(branch) or ".." in branch or branch.endswith((".lock", "/")):
        problems.append(f"pipeline:branch {branch!r} is not a valid branch name")
    account = values.get("account") or (connection["account"] if connection else "")
    region = values.get("region") or (connection["region"] if connection else "")
    if connection is not None and not _ACCOUNT.fullmatch(account):
        problems.append(f"pipeline:account {account!r} must be 12 digits")
    if connection is not None and region not in SUPPORTED_REGIONS:
        problems.append(
            f"pipeline:region {region!r} is not a supported region ({', '.join(SUPPORTED_REGIONS)})"
        )
    if problems:
        raise ConfigError("; ".join(problems))
    assert repository is not None
    return PipelineSettings(
        connection_arn=values["connection_arn"],
        repository=repository,
        branch=branch,
        account=account,
        region=region,
    )
