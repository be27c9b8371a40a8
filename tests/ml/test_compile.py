"""Native libraries for the gateways: same predictions as XGBoost, manifest, checksums, fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.model_runtime import ModelError, load_model

ELF_MACHINE = {"x86_64": 62, "aarch64": 183}  # e_machine in the ELF header


def test_manifest_lists_version_features_architectures_and_checksums(
    compiled_dir: Path, model_dir: Path
) -> None:
    manifest = json.loads((compiled_dir / "manifest.json").read_text())
    training = json.loads((model_dir / "training.json").read_text())
    assert manifest["model_version"] == "test-1"
    assert manifest["feature_names"] == training["feature_names"]
    assert set(manifest["libraries"]) == {"x86_64", "aarch64"}
    for arch, entry in manifest["libraries"].items():
        header = (compiled_dir / entry["file"]).read_bytes()[:20]
        assert header[:4] == b"\x7fELF"
        assert int.from_bytes(header[18:20], "little") == ELF_MACHINE[arch]


def test_compiled_predictions_equal_xgboost(compiled_dir: Path, feature_table) -> None:
    compiled = load_model(compiled_dir, arch="x86_64")
    reference = load_model(compiled_dir, prefer="xgboost")
    assert (compiled.backend, reference.backend) == ("compiled", "xgboost")
    x = feature_table.x[:2000].copy()
    x[::7, ::5] = np.nan  # missing values take the trees' default branches
    np.testing.assert_allclose(compiled.predict(x), reference.predict(x), atol=1e-5, rtol=0)
    for row in x[:50]:
        assert compiled.predict_one(row) == pytest.approx(reference.predict_one(row), abs=1e-5)


def test_falls_back_to_xgboost_without_a_library_for_the_architecture(
    compiled_dir: Path,
) -> None:
    model = load_model(compiled_dir, arch="riscv64")
    assert model.backend == "xgboost"


def test_refuses_a_library_whose_checksum_does_not_match(
    compiled_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(compiled_dir, broken)
    (broken / "failure_model-x86_64.so").write_bytes(b"not the library")
    with pytest.raises(ModelError, match="checksum"):
        load_model(broken, arch="x86_64")


def test_cli_compiles_and_zips_the_component_artifact(model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ml_pipeline.cli import app

    result = CliRunner().invoke(
        app,
        [
            "compile",
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "out"),
            "--arch",
            "x86_64",
            "--zip",
            str(tmp_path / "failure_model.zip"),
        ],
    )
    assert result.exit_code == 0, result.output
    import zipfile

    names = zipfile.ZipFile(tmp_path / "failure_model.zip").namelist()
    assert "failure_model/manifest.json" in names
    assert "failure_model/failure_model-x86_64.so" in names
