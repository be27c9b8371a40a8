"""One artifact per gateway component, made by one function for GDK, the CDK and the tests.

`build_component(name, out_dir, version)` writes a component's artifact, `<name>.zip`, whose root
holds:

    iiot/                the core
    config/metrics.yaml  the metric catalog (where `iiot.catalog` looks by default)
    edge_runtime/        this runtime (without this build module)
    <package>/           the component's code, edge_components/<name>/src/<package>
    requirements.txt     the core's and the `edge` extra's dependencies, pinned by constraints.txt

Greengrass unpacks `<name>.zip` into `{artifacts:decompressedPath}/<name>/`, which the recipe
puts on PYTHONPATH; the recipe's Install step installs requirements.txt into a virtual
environment. The zip is reproducible (sorted entries, fixed timestamps and modes): the same
sources give the same bytes, so the CDK asset and the component version change only with them.

Each component's gdk-config.json runs it as its custom build, from the component's folder
(with the project installed, e.g. in .venv):

    python -m edge_runtime.build com.iiot.SensorBuffer

which writes GDK's layout: greengrass-build/recipes/recipe.yaml and
greengrass-build/artifacts/<name>/NEXT_PATCH/<name>.zip.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS_DIR = ROOT / "edge_components"
CONSTRAINTS = ROOT / "constraints.txt"
# What every component ships beside its own package: archive path -> source.
SHARED = {
    "iiot": ROOT / "iiot",
    "config/metrics.yaml": ROOT / "config" / "metrics.yaml",
    "edge_runtime": ROOT / "edge_runtime",
}
# Build tooling stays out of what it builds.
LEFT_OUT = {"edge_runtime/build.py"}
REQUIREMENT_EXTRAS = ("edge",)
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can record


class BuildError(RuntimeError):
    """A component cannot be built; the message says what is missing."""


def component_package(name: str) -> Path:
    """The component's one Python package, in edge_components/<name>/src."""
    source = COMPONENTS_DIR / name / "src"
    packages = sorted(p for p in source.glob("*/__init__.py")) if source.is_dir() else []
    if len(packages) != 1:
        raise BuildError(
            f"{source} must hold exactly one Python package (a folder with __init__.py); "
            f"found {len(packages)}: is {name!r} a component built from source?"
        )
    return packages[0].parent


def pinned_requirements(extras: Sequence[str] = REQUIREMENT_EXTRAS) -> str:
    """The core's dependencies and `extras` from pyproject.toml, pinned to constraints.txt's
    versions (the gateway installs them into the component's own virtual environment)."""
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
            raise BuildError(f"{name} has no pin in constraints.txt: run `make constraints`")
        lines.append(f"{name}=={pins[name]}")
    return "\n".join(lines) + "\n"


def artifact_files(name: str) -> list[tuple[str, Path]]:
    """(path in the artifact, source file) for every file of the component's artifact except
    requirements.txt, sorted by path."""
    package = component_package(name)
    sources = {**SHARED, package.name: package}
    files = [
        (archived, path)
        for top, source in sources.items()
        for archived, path in _walk(top, source)
        if archived not in LEFT_OUT
    ]
    return sorted(files)


def _walk(top: str, source: Path) -> Iterator[tuple[str, Path]]:
    if source.is_file():
        yield top, source
        return
    for path in source.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield f"{top}/{path.relative_to(source).as_posix()}", path


def write_artifact(name: str, target: Path) -> Path:
    """Write the component's artifact zip to `target` (atomically: a reader never sees a
    partial file) and return it."""
    entries = [(archived, path.read_bytes()) for archived, path in artifact_files(name)]
    entries.append(("requirements.txt", pinned_requirements().encode()))
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
            for archived, content in entries:
                entry = zipfile.ZipInfo(archived, _FIXED_TIME)
                entry.external_attr = 0o644 << 16
                entry.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(entry, content)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return target


def build_component(name: str, out_dir: Path, version: str = "NEXT_PATCH") -> Path:
    """Build component `name` into `out_dir` in GDK's layout (recipes/recipe.yaml and
    artifacts/<name>/<version>/<name>.zip); return the artifact zip."""
    recipe = COMPONENTS_DIR / name / "recipe.yaml"
    if not recipe.is_file():
        raise BuildError(f"{recipe} does not exist: no component named {name!r}")
    out_dir = Path(out_dir)
    (out_dir / "recipes").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe, out_dir / "recipes" / "recipe.yaml")
    return write_artifact(name, out_dir / "artifacts" / name / version / f"{name}.zip")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edge_runtime.build",
        description="Build a Greengrass component's artifact (GDK's custom build).",
    )
    parser.add_argument(
        "name",
        nargs="?",
        default=Path.cwd().name,
        help="component name (default: the current folder's, as GDK runs it there)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("greengrass-build"), help="GDK's build folder"
    )
    parser.add_argument("--version", default="NEXT_PATCH", help="component version folder")
    args = parser.parse_args(argv)
    try:
        print(build_component(args.name, args.out, args.version))
    except BuildError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
