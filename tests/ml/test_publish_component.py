"""ml_pipeline/publish_component.py: the recipe of a published FailureModel version."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml_pipeline import publish_component
from ml_pipeline.publish_component import RecipeError, component_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "edge_components" / "com.iiot.FailureModel" / "recipe.yaml"
ARTIFACT = "s3://artifacts/greengrass/com.iiot.FailureModel/1.0.7/failure_model.zip"


def test_the_new_version_points_at_the_published_zip() -> None:
    recipe = yaml.safe_load(RECIPE.read_text())
    published = component_recipe(
        recipe, version="1.0.7", model_package_version="7", artifact_uri=ARTIFACT
    )
    assert published["ComponentName"] == "com.iiot.FailureModel"
    assert published["ComponentVersion"] == "1.0.7"
    assert published["ComponentConfiguration"]["DefaultConfiguration"]["modelVersion"] == "7"
    assert published["Manifests"]
    for manifest in published["Manifests"]:
        assert manifest["Artifacts"] == [{"URI": ARTIFACT, "Unarchive": "ZIP"}]
    # Everything else is the repository's recipe; the input is left as it was.
    assert published["ComponentDescription"] == recipe["ComponentDescription"]
    assert recipe == yaml.safe_load(RECIPE.read_text())


def test_the_version_is_published_under_the_environments_component_name() -> None:
    """Component versions are account-wide: each environment publishes its own FailureModel."""
    published = component_recipe(
        yaml.safe_load(RECIPE.read_text()),
        version="1.0.7",
        model_package_version="7",
        artifact_uri=ARTIFACT,
        component_name="com.iiot.dev.FailureModel",
    )
    assert published["ComponentName"] == "com.iiot.dev.FailureModel"
    with pytest.raises(RecipeError, match="is not a component name"):
        component_recipe(
            yaml.safe_load(RECIPE.read_text()),
            version="1.0.7",
            model_package_version="7",
            artifact_uri=ARTIFACT,
            component_name="com iiot",
        )


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"version": "1.0"}, "version '1.0' must be MAJOR.MINOR.PATCH"),
        ({"model_package_version": "seven"}, "must be a number"),
        ({"artifact_uri": "https://example.com/model.zip"}, "must be an s3:// URI"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(arguments: dict[str, str], problem: str) -> None:
    given = {"version": "1.0.7", "model_package_version": "7", "artifact_uri": ARTIFACT}
    with pytest.raises(RecipeError, match=problem):
        component_recipe(yaml.safe_load(RECIPE.read_text()), **(given | arguments))


def test_it_runs_as_a_lone_file_the_way_the_build_runs_it(tmp_path: Path) -> None:
    """CodeBuild runs the script next to recipe.yaml, without the project installed."""
    script = tmp_path / "publish_component.py"
    script.write_bytes(Path(publish_component.__file__).read_bytes())
    (tmp_path / "recipe.yaml").write_bytes(RECIPE.read_bytes())
    command = [sys.executable, "-I", str(script), "--recipe", "recipe.yaml", "--version", "1.0.7"]
    command += ["--model-package-version", "7", "--artifact", ARTIFACT, "--out", "recipe.json"]
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    assert json.loads((tmp_path / "recipe.json").read_text())["ComponentVersion"] == "1.0.7"
    refused = subprocess.run(
        [*command[:6], "latest", *command[7:]], cwd=tmp_path, capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "publish_component.py: version 'latest' must be MAJOR.MINOR.PATCH" in refused.stderr


def test_it_imports_nothing_of_the_project() -> None:
    tree = ast.parse(Path(publish_component.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__", "yaml"}
