"""One synthesis of the whole CDK app (dev, staging and prod) per test session.

jsii is slow, so every infra test reads the same cloud assembly: the templates, the cdk-nag
validation report (written only when a finding is not acknowledged) and the metadata files
that record acknowledgments. The synth is environment-agnostic (no account or region): dev is
a sandbox without a CLI profile here, staging and prod are unpinned (their stacks carry the
rule that refuses to deploy them).

Each environment is a cdk.Stage, so its templates are in a nested assembly
(`assembly-iiot-<env>/`), found by stack name through the manifests (`stack_templates`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

ENVIRONMENTS = ("dev", "staging", "prod")
# Stand-ins for the artifact pins (config/environments.py: ArtifactPins) that a deployment must
# give; obviously not real digests, they only let the synth under test run.
TEST_PINS = {
    "pins:emr_image_digest": "sha256:" + "e" * 64,
    "pins:flink_connector_sha256": "f" * 64,
}


def stack_templates(outdir: Path) -> dict[str, Path]:
    """Stack name -> template file, across the app's nested (stage) assemblies."""
    found: dict[str, Path] = {}

    def walk(directory: Path) -> None:
        manifest = json.loads((directory / "manifest.json").read_text())
        for artifact in manifest.get("artifacts", {}).values():
            properties = artifact.get("properties", {})
            if artifact["type"] == "aws:cloudformation:stack":
                found[properties["stackName"]] = directory / properties["templateFile"]
            elif artifact["type"] == "cdk:cloud-assembly":
                walk(directory / properties["directoryName"])

    walk(outdir)
    return found


@dataclass
class Synth:
    outdir: Path
    validation_error: str | None
    templates: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    template_paths: dict[tuple[str, str], Path] = field(default_factory=dict)

    def template(self, env: str, concern: str) -> dict[str, Any]:
        return self.templates[(env, concern)]

    def validation_report(self) -> dict[str, Any] | None:
        path = self.outdir / "validation-report.json"
        return json.loads(path.read_text()) if path.exists() else None

    def metadata(self) -> dict[str, list[dict[str, Any]]]:
        """Construct path -> metadata entries, across every stack."""
        merged: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(self.outdir.rglob("*.metadata.json")):
            for construct, entries in json.loads(path.read_text()).items():
                merged.setdefault(construct, []).extend(entries)
        return merged


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    # Deployment inputs that would change the templates: the synth under test has none (no
    # account or region, no `<env>:<setting>` context even if cdk.json holds some).
    for variable in ("CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION", "CDK_CONTEXT_JSON"):
        os.environ.pop(variable, None)
    import aws_cdk as cdk

    from config.environments import is_deploy_input
    from stacks.environment_stacks import build_app, feature_flags

    outdir = tmp_path_factory.mktemp("cdk.out")
    flags = {key: value for key, value in feature_flags().items() if not is_deploy_input(key)}
    application = cdk.App(outdir=str(outdir), context={**flags, **TEST_PINS})
    build_app(application)
    error = None
    try:
        application.synth()
    except RuntimeError as exc:  # cdk-nag findings: the report is in outdir
        error = str(exc)
    result = Synth(outdir=outdir, validation_error=error)
    for stack_name, path in stack_templates(outdir).items():
        env, concern = stack_name.removeprefix("iiot-").split("-", 1)
        result.templates[(env, concern)] = json.loads(path.read_text())
        result.template_paths[(env, concern)] = path
    return result
