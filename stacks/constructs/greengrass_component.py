"""A Greengrass v2 component version published from its folder in edge_components/.

The artifact is the zip `edge_runtime.build.build_component` makes, the same one
`gdk component build` makes (the core, the metric catalog, the edge runtime, the component's
package and a pinned requirements.txt), uploaded as a CDK file asset. The recipe is the
component's own `recipe.yaml`, inlined with three changes: the artifact URI is the asset, the
`{artifacts:decompressedPath}/<ComponentName>` paths follow the asset's file name, and the patch
number comes from the artifact's content, because Greengrass component versions are immutable:
every changed build must be a new version. Component names and versions are account-wide in a
region, so the stack gives each environment's names (`names`: `com.iiot.SensorBuffer` ->
`com.iiot.dev.SensorBuffer`), applied wherever the recipe names a component: its own name, its
dependencies, its access-control policy ids and `{<component>:artifacts:...}` references.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from aws_cdk import AssetHashType, Stack
from aws_cdk import aws_greengrassv2 as greengrass
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from edge_runtime.build import build_component
from stacks.artifacts import ROOT

DECOMPRESSED = "{artifacts:decompressedPath}"
# Built artifacts, rebuilt at every synth (cheap: no dependency install). Inside cdk.out, so
# `make clean` removes them and git ignores them.
BUILD_DIR = ROOT / "cdk.out" / ".component-builds"


def component_version(recipe_version: str, content_hash: str) -> str:
    """`major.minor` of the recipe, patch from the content (fits Greengrass' 0..2^31 range)."""
    major, minor, _patch = recipe_version.split(".")
    return f"{major}.{minor}.{int(content_hash[:7], 16)}"


def _replace(value: Any, old: str, new: str) -> Any:
    """`old` -> `new` in every string of `value`, dictionary keys included."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace(item, old, new) for item in value]
    if isinstance(value, dict):
        return {_replace(key, old, new): _replace(item, old, new) for key, item in value.items()}
    return value


def renamed(recipe: Any, names: Mapping[str, str]) -> Any:
    """`recipe` with every component name of `names` replaced by its environment's name.
    A name is replaced only as a whole (`com.iiot.FailureModel` and never inside a longer
    name), so the order of `names` does not matter."""
    result = recipe
    for old, new in names.items():
        result = _rename(result, old, new)
    return result


def _rename(value: Any, old: str, new: str) -> Any:
    pattern = re.compile(rf"(?<![\w.]){re.escape(old)}(?![\w])")
    if isinstance(value, str):
        return pattern.sub(new, value)
    if isinstance(value, list):
        return [_rename(item, old, new) for item in value]
    if isinstance(value, dict):
        return {_rename(key, old, new): _rename(item, old, new) for key, item in value.items()}
    return value


class GreengrassComponent(Construct):
    """`CfnComponentVersion` with an inline recipe and its code as a CDK asset."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        component_dir: Path,
        names: Mapping[str, str],
    ) -> None:
        super().__init__(scope, construct_id)
        self.recipe: dict[str, Any] = yaml.safe_load((component_dir / "recipe.yaml").read_text())
        self.base_name: str = self.recipe["ComponentName"]
        self.name: str = names.get(self.base_name, self.base_name)
        artifact = build_component(self.base_name, BUILD_DIR / self.base_name, version="synth")
        content_hash = hashlib.sha256(artifact.read_bytes()).hexdigest()
        self.asset = s3_assets.Asset(
            self,
            "Artifact",
            path=str(artifact),
            asset_hash_type=AssetHashType.CUSTOM,
            asset_hash=content_hash,
        )
        self.version = component_version(self.recipe["ComponentVersion"], content_hash)
        stem = Path(self.asset.s3_object_key).stem
        recipe = _replace(self.recipe, f"{DECOMPRESSED}/{self.base_name}", f"{DECOMPRESSED}/{stem}")
        recipe = renamed(recipe, names)
        recipe["ComponentVersion"] = self.version
        for manifest in recipe.get("Manifests", []):
            manifest["Artifacts"] = [
                {"URI": self.asset.s3_object_url, "Unarchive": "ZIP"},
            ]
        # What the gateways get by default: the deployed recipe's (environment names).
        self.default_configuration: dict[str, Any] = recipe.get("ComponentConfiguration", {}).get(
            "DefaultConfiguration", {}
        )
        self.component_version = greengrass.CfnComponentVersion(
            self, "Version", inline_recipe=Stack.of(self).to_json_string(recipe)
        )
        self.object_arn = f"{self.asset.bucket.bucket_arn}/{self.asset.s3_object_key}"
