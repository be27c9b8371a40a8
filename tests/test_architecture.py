"""The house's plan, enforced: imports run one way, and each room imports only what it may.

    contract (iiot, config)  ->  edge runtime  ->  parts  ->  local platform and stacks

* a module imports first-party code only from a lower layer or from its own package;
* the parts are separate rooms: no part imports another;
* the contract is gateway-safe: it imports no AWS SDK, no simulator, nothing of the platform;
* runtime code never imports the CDK; nothing is imported by a name held in a variable.

The check reads the source (an AST walk), so it sees imports inside functions too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> (layer, where its source lives)
PACKAGES: dict[str, tuple[int, Path]] = {
    "iiot": (0, ROOT / "iiot"),
    "config": (0, ROOT / "config"),
    "edge_runtime": (1, ROOT / "edge_runtime"),
    "sensor_buffer": (2, ROOT / "edge_components/com.iiot.SensorBuffer/src/sensor_buffer"),
    "failure_predictor": (
        2,
        ROOT / "edge_components/com.iiot.FailurePredictor/src/failure_predictor",
    ),
    "opcua_collector": (
        2,
        ROOT / "edge_components/com.iiot.OpcUaCollector/src/opcua_collector",
    ),
    "ml_pipeline": (2, ROOT / "ml_pipeline"),
    "spark_jobs": (2, ROOT / "spark_jobs"),
    "kda_sql": (2, ROOT / "kda_sql"),
    "lambdas": (2, ROOT / "lambdas"),
    "local_platform": (3, ROOT / "local_platform"),
    "stacks": (3, ROOT / "stacks"),
}
PARTS = {name for name, (layer, _) in PACKAGES.items() if layer == 2}
# What the gateway-safe contract may import beyond the standard library.
CORE_THIRD_PARTY = {"msgspec", "numpy", "yaml", "zstandard"}
CDK = {"aws_cdk", "constructs", "cdk_nag", "cdklabs_deploy_time_build"}


def modules(packages: dict[str, tuple[int, Path]]) -> Iterator[tuple[str, Path]]:
    for package, (_, source) in packages.items():
        if not source.is_dir():
            continue
        for path in sorted(source.rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield package, path


def imported_roots(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def dynamic_imports(tree: ast.AST) -> Iterator[int]:
    """Calls of importlib.import_module or __import__ whose argument is not a literal."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in {"import_module", "__import__"} and not isinstance(node.args[0], ast.Constant):
            yield node.lineno


def violations(
    packages: dict[str, tuple[int, Path]] = PACKAGES, root_dir: Path = ROOT
) -> list[str]:
    found = []
    for package, path in modules(packages):
        layer = PACKAGES[package][0]
        where = path.relative_to(root_dir)
        tree = ast.parse(path.read_text(), str(path))
        for line, root in imported_roots(tree):
            if root in PACKAGES and root != package:
                other = PACKAGES[root][0]
                if other > layer:
                    found.append(f"{where}:{line}: {package} (layer {layer}) imports {root}")
                elif other == layer:
                    found.append(f"{where}:{line}: {package} imports {root}, a room of its own")
            if layer < 3 and root in CDK:
                found.append(f"{where}:{line}: runtime code imports the CDK ({root})")
            third_party = root not in PACKAGES and not _stdlib(root)
            if package == "iiot" and third_party and root not in CORE_THIRD_PARTY:
                found.append(f"{where}:{line}: the core imports {root} (not gateway-safe)")
        found.extend(f"{where}:{line}: import by a computed name" for line in dynamic_imports(tree))
    return found


def _stdlib(root: str) -> bool:
    import sys

    return root in sys.stdlib_module_names or root == "__future__"


def test_imports_run_one_way():
    assert violations() == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from local_platform.simulator import FleetConfig", "imports local_platform"),
        ("import spark_jobs.io", "a room of its own"),
        ("import awsiot", "not gateway-safe"),
        ("import aws_cdk", "runtime code imports the CDK"),
        ("import importlib\nimportlib.import_module(name)", "computed name"),
    ],
)
def test_the_check_finds_each_kind_of_violation(tmp_path, source, expected):
    """The check is not vacuous: a planted module of each wrong kind is reported."""
    package = "ml_pipeline" if "spark_jobs" in source else "iiot"
    planted = tmp_path / package
    planted.mkdir()
    (planted / "planted.py").write_text(source + "\n")
    found = violations({package: (PACKAGES[package][0], planted)}, tmp_path)
    assert any(expected in problem for problem in found), found
