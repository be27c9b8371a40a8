"""One build function per component artifact: its layout, its pins, and GDK, recipe and CDK
agreeing with it."""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from edge_runtime.build import (
    INSTALL_OPTIONS,
    TARGETS,
    BuildError,
    build_component,
    main,
    pinned_requirements,
)

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {
    "com.iiot.SensorBuffer": "sensor_buffer",
    "com.iiot.FailurePredictor": "failure_predictor",
    "com.iiot.OpcUaCollector": "opcua_collector",
}
# What the artifact's modules may import beyond the standard library and what it ships: the
# import names of requirements.txt, and xgboost, which the model runtime imports only as the
# fallback for a missing native library (refused with a reason when it is not installed).
REQUIRED_IMPORTS = {"msgspec", "numpy", "yaml", "zstandard", "typer", "rich", "awsiot", "awscrt"}
# What a component needs beyond them (its pyproject.toml extra besides `edge`).
COMPONENT_IMPORTS = {"com.iiot.OpcUaCollector": {"asyncua", "cryptography"}}
OPTIONAL_IMPORTS = {"xgboost"}


def recipe(name: str) -> dict:
    return yaml.safe_load((ROOT / "edge_components" / name / "recipe.yaml").read_text())


@pytest.mark.parametrize(("name", "package"), COMPONENTS.items())
def test_the_artifact_holds_the_core_the_catalog_the_runtime_the_component_and_pins(
    tmp_path: Path, name: str, package: str
) -> None:
    artifact = build_component(name, tmp_path, "1.0.0")
    assert artifact == tmp_path / "artifacts" / name / "1.0.0" / f"{name}.zip"
    names = set(zipfile.ZipFile(artifact).namelist())
    for needed in (
        "iiot/contract.py",
        "config/metrics.yaml",
        "edge_runtime/transport.py",
        "edge_runtime/ipc.py",
        "edge_runtime/mqtt.py",
        "edge_runtime/run.py",
        "edge_runtime/features.py",
        "edge_runtime/model_runtime.py",
        f"{package}/__init__.py",
        f"{package}/main.py",
        "requirements.txt",
    ):
        assert needed in names
    tops = {entry.split("/")[0] for entry in names}
    assert tops == {"iiot", "config", "edge_runtime", package, "wheels", "requirements.txt"}
    assert "edge_runtime/build.py" not in names  # the build tooling stays out
    assert not [entry for entry in names if "__pycache__" in entry or entry.endswith(".pyc")]


def _requirements(text: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, sha256 hashes) of a hash-checked requirements file."""
    parsed: dict[str, tuple[str, set[str]]] = {}
    for block in text.replace("\\\n", " ").splitlines():
        requirement, *hashes = block.split("--hash=sha256:")
        name, _, version = requirement.split(";")[0].strip().partition("==")
        parsed[name] = (version, {h.strip() for h in hashes})
    return parsed


@pytest.mark.parametrize("name", COMPONENTS)
def test_the_artifact_carries_a_hash_checked_wheel_of_every_pin_for_each_target(
    tmp_path: Path, name: str
) -> None:
    archive = zipfile.ZipFile(build_component(name, tmp_path))
    wheels = {
        entry.removeprefix("wheels/"): hashlib.sha256(archive.read(entry)).hexdigest()
        for entry in archive.namelist()
        if entry.startswith("wheels/")
    }
    requirements = _requirements(archive.read("requirements.txt").decode())
    # What the component asks for is there, at constraints.txt's pins ...
    extras = ("edge", "opcua") if name == "com.iiot.OpcUaCollector" else ("edge",)
    for line in pinned_requirements(extras).splitlines():
        wanted, _, version = line.partition("==")
        assert requirements[wanted][0] == version
    # ... with its whole closure: each pin has a wheel for every target, and every hash is a
    # shipped wheel's, every shipped wheel hashed.
    hashed = set().union(*(hashes for _, hashes in requirements.values()))
    assert hashed == set(wheels.values())
    for requirement, (version, hashes) in requirements.items():
        files = [f for f, digest in wheels.items() if digest in hashes]
        assert all(f.split("-")[1] == version for f in files), (requirement, files)
        for target in TARGETS:
            assert [f for f in files if f.endswith(("-any.whl", f"_{target.machine}.whl"))], (
                requirement,
                target,
            )
    assert (tmp_path / "recipes" / "recipe.yaml").read_text() == (
        ROOT / "edge_components" / name / "recipe.yaml"
    ).read_text()


def test_the_same_sources_build_the_same_bytes(tmp_path: Path) -> None:
    first = build_component("com.iiot.FailurePredictor", tmp_path / "a").read_bytes()
    second = build_component("com.iiot.FailurePredictor", tmp_path / "b").read_bytes()
    assert first == second


@pytest.mark.parametrize(("name", "package"), COMPONENTS.items())
def test_gdk_and_the_recipe_use_the_build_and_its_layout(name: str, package: str) -> None:
    gdk = json.loads((ROOT / "edge_components" / name / "gdk-config.json").read_text())
    build = gdk["component"][name]["build"]
    assert build == {
        "build_system": "custom",
        "custom_build_command": ["python3", "-m", "edge_runtime.build", name],
    }
    manifests = recipe(name)["Manifests"]
    # One manifest per target of the artifact's wheels.
    assert [m["Platform"] for m in manifests] == [
        {"os": "linux", "architecture": target.architecture} for target in TARGETS
    ]
    for manifest in manifests:
        (artifact,) = manifest["Artifacts"]
        assert artifact["URI"].endswith(f"/{name}.zip")
        assert artifact["Unarchive"] == "ZIP"
        lifecycle = manifest["Lifecycle"]
        # Greengrass unpacks <name>.zip into a folder of that name: the artifact's root.
        root = f"{{artifacts:decompressedPath}}/{name}"
        assert lifecycle["setEnv"]["PYTHONPATH"] == root
        install = lifecycle["Install"]["Script"].split()
        # The artifact only: no index, wheels only, every hash checked.
        assert install[:2] == ["python3.11", "-m"]
        pip = install.index("{work:path}/venv/bin/pip")
        assert install[pip + 1 : pip + 1 + len(INSTALL_OPTIONS)] == list(INSTALL_OPTIONS)
        assert install[install.index("--find-links") + 1] == f"{root}/wheels"
        assert install[install.index("-r") + 1] == f"{root}/requirements.txt"
        assert not {"--index-url", "--extra-index-url"} & set(install)
        assert f"python -m {package}" in lifecycle["Run"]["Script"]


@pytest.mark.parametrize(("name", "package"), COMPONENTS.items())
def test_the_artifacts_modules_import_only_what_it_ships_and_requires(
    tmp_path: Path, name: str, package: str
) -> None:
    archive = zipfile.ZipFile(build_component(name, tmp_path))
    shipped = {"iiot", "edge_runtime", package}
    required = REQUIRED_IMPORTS | COMPONENT_IMPORTS.get(name, set())
    outside = {}
    for entry in archive.namelist():
        if not entry.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(archive.read(entry))):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                allowed = shipped | required | OPTIONAL_IMPORTS
                if root not in allowed and root not in sys.stdlib_module_names:
                    outside[f"{entry}:{node.lineno}"] = root
    assert outside == {}


def test_an_unknown_component_is_refused_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BuildError, match=r"no component named 'com\.iiot\.Nothing'"):
        build_component("com.iiot.Nothing", tmp_path)
    # The FailureModel is data (built by `iiot ml compile`), not a package built from src/.
    with pytest.raises(SystemExit) as exit_info:
        main(["com.iiot.FailureModel", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "must hold exactly one Python package" in capsys.readouterr().err
