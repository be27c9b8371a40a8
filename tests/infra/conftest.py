"""One synthesis of the whole CDK app (dev, staging and prod) per test session.

jsii is slow, so every infra test reads the same cloud assembly: the templates, the cdk-nag
validation report (written only when a finding is not acknowledged) and the metadata files
that record acknowledgments. The synth is environment-agnostic (no account or region).
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


@dataclass
class Synth:
    outdir: Path
    validation_error: str | None
    templates: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def template(self, env: str, concern: str) -> dict[str, Any]:
        return self.templates[(env, concern)]

    def validation_report(self) -> dict[str, Any] | None:
        path = self.outdir / "validation-report.json"
        return json.loads(path.read_text()) if path.exists() else None

    def metadata(self) -> dict[str, list[dict[str, Any]]]:
        """Construct path -> metadata entries, across every stack."""
        merged: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(self.outdir.glob("*.metadata.json")):
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
    application = cdk.App(outdir=str(outdir), context=flags)
    build_app(application)
    error = None
    try:
        application.synth()
    except RuntimeError as exc:  # cdk-nag findings: the report is in outdir
        error = str(exc)
    result = Synth(outdir=outdir, validation_error=error)
    for env in ENVIRONMENTS:
        for path in outdir.glob(f"iiot-{env}-*.template.json"):
            concern = path.name.removeprefix(f"iiot-{env}-").removesuffix(".template.json")
            result.templates[(env, concern)] = json.loads(path.read_text())
    return result
