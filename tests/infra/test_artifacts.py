"""A file the stacks deploy that does not exist fails synth, naming the file and the command
that creates it; no part of an environment is left out with only a warning."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from stacks import artifacts
from stacks.artifacts import ROOT, Artifact, MissingArtifactError
from tests.infra.conftest import TEST_PINS


def _hide(monkeypatch: pytest.MonkeyPatch, artifact: Artifact, empty: Path) -> None:
    """Point `artifact` at an empty folder, wherever the stacks look it up."""
    missing = dataclasses.replace(artifact, root=empty)
    for attribute, value in vars(artifacts).items():
        if value is artifact:
            monkeypatch.setattr(artifacts, attribute, missing)
    for name, value in artifacts.COMPONENTS.items():
        if value is artifact:
            monkeypatch.setitem(artifacts.COMPONENTS, name, missing)


def test_the_error_names_the_file_and_the_command_that_writes_it(tmp_path: Path) -> None:
    missing = dataclasses.replace(artifacts.ML_PIPELINE, root=tmp_path)
    with pytest.raises(MissingArtifactError) as error:
        missing.require()
    assert str(error.value) == (
        f"SageMaker pipeline definition: ml_pipeline/pipeline_definition.json does not exist "
        f"in {tmp_path}; create it with "
        "`iiot ml pipeline --out ml_pipeline/pipeline_definition.json`"
    )


def test_a_missing_source_file_is_restored_from_the_repository(tmp_path: Path) -> None:
    missing = dataclasses.replace(artifacts.COMPONENTS["com.iiot.SensorBuffer"], root=tmp_path)
    with pytest.raises(MissingArtifactError, match="git restore edge_components/"):
        missing.require()
    assert artifacts.COMPONENTS["com.iiot.SensorBuffer"].require().name == "recipe.yaml"


@pytest.mark.parametrize("artifact", artifacts.ALL, ids=lambda artifact: artifact.name)
def test_a_missing_artifact_fails_synth(
    artifact: Artifact, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import aws_cdk as cdk

    from config.environments import is_deploy_input
    from stacks.environment_stacks import build_app, feature_flags

    _hide(monkeypatch, artifact, tmp_path / "empty")
    flags = {key: value for key, value in feature_flags().items() if not is_deploy_input(key)}
    app = cdk.App(outdir=str(tmp_path / "cdk.out"), context={**flags, **TEST_PINS})
    with pytest.raises(MissingArtifactError) as error:
        build_app(app, ["dev"])
    assert str(error.value).startswith(f"{artifact.name}: {artifact.files[0]}")
    assert (artifact.made_by or "git restore") in str(error.value)


def test_app_py_exits_with_the_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    assert spec is not None
    assert spec.loader is not None
    composition_root = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(composition_root)

    _hide(monkeypatch, artifacts.ALERT_ROUTER, tmp_path)
    monkeypatch.setenv("IIOT_ENVIRONMENTS", "dev")
    monkeypatch.setenv("CDK_OUTDIR", str(tmp_path / "cdk.out"))
    # The pins a deployment gives (cdk.json), so that the missing artifact is the first error.
    flags = composition_root.feature_flags()
    monkeypatch.setattr(composition_root, "feature_flags", lambda: {**flags, **TEST_PINS})
    with pytest.raises(SystemExit, match=r"^app\.py: alert router Lambda: lambdas/alert_router/"):
        composition_root.main()
