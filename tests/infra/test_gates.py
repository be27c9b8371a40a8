"""The quality gates over the whole synthesized app: cdk-nag (AwsSolutions) and cfn-lint."""

from __future__ import annotations

import pytest
from cfnlint.api import ManualArgs, lint_file

from config.environments import SUPPORTED_REGIONS
from tests.infra.conftest import ENVIRONMENTS, Synth

# cfn-lint checks CDK output; these rules flag what CDK generates on purpose:
#   W3005  redundant DependsOn: CDK orders IAM policies before their users explicitly, which
#          cfn-lint sees as already implied by a GetAtt. Harmless, and not ours to change.
CFN_LINT_IGNORED = ["W3005"]
# Lint for every region the app supports (config/environments.py: SUPPORTED_REGIONS): a
# resource type missing in one (cfn-lint E3006) fails here, before a deploy there would.
CFN_LINT_REGIONS = list(SUPPORTED_REGIONS)


def test_every_environment_synthesizes_every_stack(synth: Synth) -> None:
    for env in ENVIRONMENTS:
        concerns = {concern for (name, concern) in synth.templates if name == env}
        assert {
            "network",
            "lake",
            "ingestion",
            "alerting",
            "iot",
            "warehouse",
            "timeseries",
            "monitoring",
            "streaming",
            "edge",
            "ml",
        } <= concerns, env


def test_cdk_nag_has_no_unacknowledged_finding(synth: Synth) -> None:
    report = synth.validation_report()
    findings = []
    for plugin in (report or {}).get("pluginReports", []):
        for violation in plugin["violations"]:
            for construct in violation["violatingConstructs"]:
                findings.append(
                    f"{violation['ruleName']} at {construct['constructPath']}: "
                    f"{violation['description']}"
                )
    assert not findings, "\n".join(findings)
    assert synth.validation_error is None


def test_every_acknowledgment_states_a_reason(synth: Synth) -> None:
    acknowledged = [
        (path, entry["data"])
        for path, entries in synth.metadata().items()
        for entry in entries
        if entry["type"] == "aws:cdk:acknowledged-rules"
    ]
    assert acknowledged, "the app acknowledges some findings; none were recorded"
    for path, rules in acknowledged:
        for rule, reason in rules.items():
            assert len(reason.split()) >= 8, f"{path}: {rule} needs a real reason, got {reason!r}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_cfn_lint_is_clean(synth: Synth, env: str) -> None:
    config = ManualArgs(ignore_checks=CFN_LINT_IGNORED, regions=CFN_LINT_REGIONS)
    problems = []
    for (name, concern), template in sorted(synth.template_paths.items()):
        if name == env:
            problems += [f"{concern}: {match}" for match in lint_file(template, config=config)]
    assert not problems, "\n".join(problems)
