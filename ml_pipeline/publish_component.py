"""The recipe of a new com.iiot.FailureModel version, made from the component's recipe.yaml.

The last step of a model's way to the gateways. After a model package is approved, the ML
stack's publish flow (stacks/constructs/model_publish_flow.py) runs a CodeBuild job that
copies the pipeline's compiled failure_model.zip next to the other published versions, runs
this script to write the recipe of the version that points at that zip, and registers the
recipe with `aws greengrassv2 create-component-version`:

    python3 publish_component.py --recipe recipe.yaml --version 1.0.7 \\
        --model-package-version 7 --artifact s3://bucket/.../failure_model.zip \\
        --component-name com.iiot.dev.FailureModel --out recipe.json

The component name is the environment's (component versions are account-wide in a region, so
each environment publishes its own FailureModel); without `--component-name` the recipe's stays.

It runs on CodeBuild's standard image with only PyYAML installed, as a lone file: it imports
the standard library and yaml, nothing of the project.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# Greengrass component versions are MAJOR.MINOR.PATCH.
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RecipeError(ValueError):
    """The inputs cannot make a valid component recipe."""


def component_recipe(
    recipe: Mapping[str, Any],
    *,
    version: str,
    model_package_version: str,
    artifact_uri: str,
    component_name: str | None = None,
) -> dict[str, Any]:
    """`recipe` as version `version` (of `component_name`, if given): every manifest's one
    artifact is the zip at `artifact_uri`, and the default configuration names the model
    package version (the FailurePredictor reports it with each prediction)."""
    problems = []
    if component_name is not None and not _NAME.fullmatch(component_name):
        problems.append(f"component name {component_name!r} is not a component name")
    if not _VERSION.fullmatch(version):
        problems.append(f"version {version!r} must be MAJOR.MINOR.PATCH")
    if not model_package_version.isdigit():
        problems.append(f"model package version {model_package_version!r} must be a number")
    if not artifact_uri.startswith("s3://"):
        problems.append(f"artifact {artifact_uri!r} must be an s3:// URI")
    if not recipe.get("Manifests"):
        problems.append("the recipe has no Manifests to point at the artifact")
    if problems:
        raise RecipeError("; ".join(problems))
    result = copy.deepcopy(dict(recipe))
    if component_name is not None:
        result["ComponentName"] = component_name
    result["ComponentVersion"] = version
    configuration = result.setdefault("ComponentConfiguration", {})
    configuration.setdefault("DefaultConfiguration", {})["modelVersion"] = model_package_version
    for manifest in result["Manifests"]:
        manifest["Artifacts"] = [{"URI": artifact_uri, "Unarchive": "ZIP"}]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the recipe of a new com.iiot.FailureModel version."
    )
    parser.add_argument("--recipe", type=Path, required=True, help="the component's recipe.yaml")
    parser.add_argument("--version", required=True, help="the new component version")
    parser.add_argument(
        "--model-package-version", required=True, help="the approved model package's version"
    )
    parser.add_argument("--artifact", required=True, help="s3:// URI of the published zip")
    parser.add_argument(
        "--component-name", help="the environment's component name (default: the recipe's)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the recipe JSON to write")
    args = parser.parse_args(argv)
    try:
        recipe = component_recipe(
            yaml.safe_load(args.recipe.read_text()),
            version=args.version,
            model_package_version=args.model_package_version,
            artifact_uri=args.artifact,
            component_name=args.component_name,
        )
    except RecipeError as error:
        print(f"publish_component.py: {error}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(recipe, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
