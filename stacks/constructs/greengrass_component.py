"""A Greengrass v2 component version published from its folder in edge_components/.

The recipe is the component's own `recipe.yaml`, inlined with three changes: the artifact URI
is the CDK asset (a zip of `src/`, the `iiot` core, the metric catalog, any shared modules and a
pinned requirements.txt), the `{artifacts:decompressedPath}/<ComponentName>` paths follow the
asset's file name, and the patch number comes from the asset's content, because Greengrass
component versions are immutable: every changed build must be a new version.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from aws_cdk import AssetHashType, Stack
from aws_cdk import aws_greengrassv2 as greengrass
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from stacks.artifacts import ROOT
from stacks.constructs.python_bundle import (
    CONSTRAINTS,
    LocalPythonBundling,
    local_bundling,
    source_hash,
)

DECOMPRESSED = "{artifacts:decompressedPath}"


def pinned_requirements(extras: Sequence[str] = ("edge",)) -> str:
    """The core's dependencies and `extras`, pinned to constraints.txt's versions (the gateway
    installs them into its own virtual environment)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            pins[name.lower()] = version.split(";")[0].strip()
    lines = []
    for name in sorted({n.split("[")[0].lower() for n in names}):
        if name not in pins:
            raise ValueError(f"{name} has no pin in constraints.txt: run `make constraints`")
        lines.append(f"{name}=={pins[name]}")
    return "\n".join(lines) + "\n"


def component_version(recipe_version: str, content_hash: str) -> str:
    """`major.minor` of the recipe, patch from the content (fits Greengrass' 0..2^31 range)."""
    major, minor, _patch = recipe_version.split(".")
    return f"{major}.{minor}.{int(content_hash[:7], 16)}"


def _replace(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace(item, old, new) for item in value]
    if isinstance(value, dict):
        return {key: _replace(item, old, new) for key, item in value.items()}
    return value


class GreengrassComponent(Construct):
    """`CfnComponentVersion` with an inline recipe and its code as a CDK asset."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        component_dir: Path,
        shared_files: Sequence[str] = (),
    ) -> None:
        super().__init__(scope, construct_id)
        self.recipe: dict[str, Any] = yaml.safe_load((component_dir / "recipe.yaml").read_text())
        self.name: str = self.recipe["ComponentName"]
        copies: list[tuple[Path, str]] = [
            (path, "") for path in sorted((component_dir / "src").iterdir())
        ]
        copies += [(ROOT / "iiot", ""), (ROOT / "config" / "metrics.yaml", "config")]
        copies += [(ROOT / file, str(Path(file).parent)) for file in shared_files]
        requirements = pinned_requirements()
        bundling = LocalPythonBundling(
            copies=copies,
            requirements=[],
            platform="",
            python_version="",
            files={"requirements.txt": requirements},
        )
        content_hash = source_hash(copies, [], requirements)
        self.asset = s3_assets.Asset(
            self,
            "Artifact",
            path=str(component_dir),
            asset_hash_type=AssetHashType.CUSTOM,
            asset_hash=content_hash,
            bundling=local_bundling(bundling),
        )
        self.version = component_version(self.recipe["ComponentVersion"], content_hash)
        stem = Path(self.asset.s3_object_key).stem
        recipe = _replace(self.recipe, f"{DECOMPRESSED}/{self.name}", f"{DECOMPRESSED}/{stem}")
        recipe["ComponentVersion"] = self.version
        for manifest in recipe.get("Manifests", []):
            manifest["Artifacts"] = [
                {"URI": self.asset.s3_object_url, "Unarchive": "ZIP"},
            ]
        self.default_configuration: dict[str, Any] = self.recipe.get(
            "ComponentConfiguration", {}
        ).get("DefaultConfiguration", {})
        self.component_version = greengrass.CfnComponentVersion(
            self, "Version", inline_recipe=Stack.of(self).to_json_string(recipe)
        )
        self.object_arn = f"{self.asset.bucket.bucket_arn}/{self.asset.s3_object_key}"
