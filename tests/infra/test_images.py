"""The container images' build contexts, as staged at synth for the deploy-time builds.

No Docker engine runs here, so the images themselves are built only in CodeBuild. What can go
wrong before that is checked here: the ML context (x86_64, this machine's architecture) must run
in a clean Python 3.11 that sees nothing but the context, exactly as the Dockerfile wires it
(a .pth file, the entry scripts on PATH); the lake context (aarch64) must hold wheels for the
image's platform and Python, and the code and catalog the jobs import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stacks.lake_stack import SPARK_PYTHON, SPARK_PYTHON_VERSION, spark_image_context
from stacks.ml_stack import ML_PYTHON, ml_image_context


def _wheel_tags(app: Path, distribution: str) -> list[str]:
    (info,) = app.glob(f"{distribution}-*.dist-info")
    lines = (info / "WHEEL").read_text().splitlines()
    return [line.split(": ", 1)[1] for line in lines if line.startswith("Tag: ")]


@pytest.fixture(scope="module")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment of a bare Python 3.11 with no packages (the image's base)."""
    interpreter = shutil.which(f"python{ML_PYTHON}")
    if interpreter is None:
        pytest.fail(f"python{ML_PYTHON} is not installed (the set-up installs it)")
    venv = tmp_path_factory.mktemp("image-python")
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


def test_ml_image_context_runs_every_pipeline_entry_point(
    image_python: Path, tmp_path: Path
) -> None:
    context = ml_image_context()
    dockerfile = (context / "Dockerfile").read_text()
    assert f"python:{ML_PYTHON}-" in dockerfile
    app = context / "app"
    # What the Dockerfile does: name app/ in a .pth file, install the two entry scripts.
    python = image_python / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-c",
            "import pathlib, sys, sysconfig; "
            "pathlib.Path(sysconfig.get_path('purelib'), 'iiot.pth').write_text(sys.argv[1])",
            str(app),
        ],
        check=True,
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for script in ("iiot", "train"):
        target = bin_dir / script
        shutil.copy(app / "ml_pipeline" / "container" / script, target)
        target.chmod(0o755)
    environment = {
        "PATH": f"{bin_dir}{os.pathsep}{image_python / 'bin'}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),
    }

    def run(*command: str) -> str:
        result = subprocess.run(
            command, cwd=tmp_path, env=environment, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    imported = run(
        "python3",
        "-c",
        "import ml_pipeline.cli, ml_pipeline.train, ml_pipeline.evaluate_job, ml_pipeline.compile, "
        "tl2cgen, xgboost, iiot.catalog as c; print(sorted(c.load_catalog()))",
    )
    assert "'temperature'" in imported  # the catalog from app/config/metrics.yaml
    assert "--model-dir" in run("train", "--help")
    for command in ("features", "compile"):  # the processing steps' entry points
        assert "Usage" in run("iiot", "ml", command, "--help")
    assert "usage" in run("python3", "-m", "ml_pipeline.evaluate_job", "--help")
    # Nothing leaked in from this machine's environment.
    assert str(Path(sys.prefix)) not in run("python3", "-c", "import sys; print(sys.path)")


def test_train_script_points_at_sagemakers_fixed_paths() -> None:
    script = (ml_image_context() / "app" / "ml_pipeline" / "container" / "train").read_text()
    for variable, path in (
        ("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"),  # the pipeline's `train` channel
        ("SM_MODEL_DIR", "/opt/ml/model"),
        ("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"),
    ):
        assert f'export {variable}="${{{variable}:-{path}}}"' in script
    assert "exec python3 -m ml_pipeline.train" in script


def test_lake_image_context_holds_aarch64_wheels_for_its_python() -> None:
    context = spark_image_context()
    dockerfile = (context / "Dockerfile").read_text()
    assert f"dnf install -y python{SPARK_PYTHON_VERSION}" in dockerfile
    assert f"/usr/bin/python{SPARK_PYTHON_VERSION}" == SPARK_PYTHON
    app = context / "app"
    abi = f"cp{SPARK_PYTHON_VERSION.replace('.', '')}"
    for distribution in ("numpy", "pyarrow", "msgspec", "zstandard"):
        tags = _wheel_tags(app, distribution)
        assert tags, distribution
        assert all(tag.endswith("_aarch64") and abi in tag for tag in tags), (distribution, tags)
    for package in ("iiot", "spark_jobs", "yaml"):
        assert (app / package / "__init__.py").is_file(), package
    assert (app / "config" / "metrics.yaml").is_file()
    # Console scripts of the dependencies would name this machine's interpreter.
    assert not (app / "bin").exists()
