"""One artifact per gateway component, made by one function for GDK, the CDK and the tests.

`build_component(name, out_dir, version)` writes a component's artifact, `<name>.zip`, whose root
holds:

    iiot/                the core
    config/metrics.yaml  the metric catalog (where `iiot.catalog` looks by default)
    edge_runtime/        this runtime (without this build module)
    <package>/           the component's code, edge_components/<name>/src/<package>
    wheels/              every wheel the component needs, for each gateway target
    requirements.txt     the whole dependency closure, pinned by constraints.txt, with the
                         SHA-256 of every wheel in wheels/

Gateways in a factory usually reach AWS endpoints only, so the Install step installs from the
artifact alone, hash-checked (`INSTALL_OPTIONS`):

    python3.11 -m venv --clear VENV && VENV/bin/pip --isolated install --no-index
        --only-binary=:all: --require-hashes --find-links ROOT/wheels -r ROOT/requirements.txt

The targets (`TARGETS`) are CPython 3.11 on glibc Linux (manylinux 2.17 to 2.28) for x86_64
(Greengrass' `amd64`) and aarch64; each recipe lists them as its manifests' platforms. The
wheels are downloaded once per set of pins (`pip download --only-binary=:all: --platform ...
-c constraints.txt`) into a cache outside the repository (`wheel_cache_dir`,
$IIOT_WHEEL_CACHE or ~/.cache/iiot-platform/wheels), keyed by the pins and constraints.txt:
later builds, the CDK synth among them, copy them from there.

Greengrass unpacks `<name>.zip` into `{artifacts:decompressedPath}/<name>/`, which the recipe
puts on PYTHONPATH. The zip is reproducible (sorted entries, fixed timestamps and modes): the
same sources and pins give the same bytes, so the CDK asset and the component version change
only with them.

Each component's gdk-config.json runs it as its custom build, from the component's folder
(with the project installed, e.g. in .venv):

    python -m edge_runtime.build com.iiot.SensorBuffer

which writes GDK's layout: greengrass-build/recipes/recipe.yaml and
greengrass-build/artifacts/<name>/NEXT_PATCH/<name>.zip. `python -m edge_runtime.build
--fetch-wheels` fills the wheel cache for every component (scripts/bootstrap.sh does, so that
no test downloads).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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
# The pyproject.toml extras each component installs beside the core's dependencies.
REQUIREMENT_EXTRAS: tuple[str, ...] = ("edge",)
COMPONENT_EXTRAS: Mapping[str, tuple[str, ...]] = {
    "com.iiot.OpcUaCollector": ("edge", "opcua"),
}
WHEELS_DIR = "wheels"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can record
CACHE_ENV_VAR = "IIOT_WHEEL_CACHE"
_CACHE_FORMAT = "1"  # bump when the cached layout changes


@dataclass(frozen=True)
class Target:
    """A gateway platform: Greengrass' architecture name and pip's platform tags."""

    architecture: str  # the recipe manifest's Platform.architecture
    machine: str  # platform.machine() on the gateway, the wheels' tag suffix
    platforms: tuple[str, ...]


def _manylinux(machine: str) -> tuple[str, ...]:
    """glibc 2.28 down to 2.17 (pip does not widen a --platform to older glibc versions)."""
    return (
        *(f"manylinux_2_{minor}_{machine}" for minor in range(28, 16, -1)),
        f"manylinux2014_{machine}",
    )


PYTHON_VERSION = "3.11"
TARGETS = (
    Target("amd64", "x86_64", _manylinux("x86_64")),
    Target("aarch64", "aarch64", _manylinux("aarch64")),
)
# How the recipes' Install step runs pip: the artifact only, every wheel hash-checked.
INSTALL_OPTIONS = (
    "--isolated",  # no pip.conf or PIP_* variable of the gateway adds an index or a link
    "install",
    "--no-index",
    "--only-binary=:all:",
    "--require-hashes",
)


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


def component_extras(name: str) -> tuple[str, ...]:
    return COMPONENT_EXTRAS.get(name, REQUIREMENT_EXTRAS)


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            pins[_normalize(name)] = version.split(";")[0].strip()
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(extras: Sequence[str] = REQUIREMENT_EXTRAS) -> str:
    """The core's dependencies and `extras` from pyproject.toml, pinned to constraints.txt's
    versions: what the component asks for (the closure and its hashes: `wheelhouse`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    pins = _pins()
    lines = []
    for name in sorted({_normalize(re.split(r"[\[<>=!~; ]", n)[0]) for n in names}):
        if name not in pins:
            raise BuildError(f"{name} has no pin in constraints.txt: run `make constraints`")
        lines.append(f"{name}=={pins[name]}")
    return "\n".join(lines) + "\n"


def wheel_cache_dir() -> Path:
    """Where downloaded wheels are kept between builds: $IIOT_WHEEL_CACHE, else
    $XDG_CACHE_HOME/iiot-platform/wheels, else ~/.cache/iiot-platform/wheels."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iiot-platform" / "wheels"


@dataclass(frozen=True)
class Wheelhouse:
    """The wheels of one set of pins for every target, and their hash-checked requirements."""

    directory: Path  # holds the .whl files
    requirements: str  # `name==version --hash=sha256:...` for the whole closure

    @property
    def wheels(self) -> list[Path]:
        return sorted(self.directory.glob("*.whl"))


def wheelhouse(extras: Sequence[str] = REQUIREMENT_EXTRAS) -> Wheelhouse:
    """The wheels for `extras` on every target, from the cache or downloaded into it."""
    top = pinned_requirements(extras)
    key = hashlib.sha256(
        "\n".join(
            [
                _CACHE_FORMAT,
                top,
                CONSTRAINTS.read_text(),
                PYTHON_VERSION,
                *(" ".join(t.platforms) for t in TARGETS),
            ]
        ).encode()
    ).hexdigest()[:16]
    cache = wheel_cache_dir()
    entry = cache / key
    if not (entry / "requirements.txt").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with _locked(cache / f".{key}.lock"):
            if not (entry / "requirements.txt").is_file():  # another build may have made it
                _download(top, entry)
    return Wheelhouse(entry / WHEELS_DIR, (entry / "requirements.txt").read_text())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(top: str, entry: Path) -> None:
    """Download the closure of `top` for every target into `entry` (published by renaming a
    finished partial directory, so an entry with requirements.txt is complete)."""
    partial = entry.with_name(f"{entry.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    wheels = partial / WHEELS_DIR
    wheels.mkdir(parents=True)
    top_file = partial / "top.txt"
    top_file.write_text(top)
    by_target: dict[str, list[Path]] = {}
    for target in TARGETS:
        folder = partial / target.machine
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
            *(f"--platform={platform}" for platform in target.platforms),
            "-r", str(top_file), "-c", str(CONSTRAINTS), "-d", str(folder),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise BuildError(
                f"pip download for {target.machine} failed (the build needs the package "
                f"index once per set of pins, then works from {wheel_cache_dir()}):\n"
                + result.stderr[-3000:]
            )
        by_target[target.machine] = sorted(folder.glob("*.whl"))
    (partial / "requirements.txt").write_text(_hashed_requirements(by_target))
    for files in by_target.values():
        for path in files:
            destination = wheels / path.name
            if not destination.exists():
                path.rename(destination)
    for target in TARGETS:
        shutil.rmtree(partial / target.machine)
    top_file.unlink()
    shutil.rmtree(entry, ignore_errors=True)
    partial.rename(entry)


def _wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return _normalize(name), version


def _hashed_requirements(by_target: Mapping[str, Sequence[Path]]) -> str:
    """One requirement per distribution with the hash of each target's wheel; a distribution
    only some targets need gets a platform_machine marker. Every version must be
    constraints.txt's pin."""
    pins = _pins()
    hashes: dict[tuple[str, str], set[str]] = {}
    machines: dict[tuple[str, str], set[str]] = {}
    for machine, files in by_target.items():
        for path in files:
            key = _wheel_name_version(path)
            if pins.get(key[0]) != key[1]:
                raise BuildError(
                    f"{path.name}: {key[0]} {key[1]} is not constraints.txt's pin "
                    f"({pins.get(key[0], 'none')}): run `make constraints`"
                )
            hashes.setdefault(key, set()).add(hashlib.sha256(path.read_bytes()).hexdigest())
            machines.setdefault(key, set()).add(machine)
    lines = []
    for (name, version), digests in sorted(hashes.items()):
        marker = ""
        if len(machines[(name, version)]) < len(by_target):
            only = sorted(machines[(name, version)])
            marker = " ; " + " or ".join(f"platform_machine == '{m}'" for m in only)
        lines.append(
            f"{name}=={version}{marker} \\\n"
            + " \\\n".join(f"    --hash=sha256:{digest}" for digest in sorted(digests))
        )
    return "\n".join(lines) + "\n"


def artifact_files(name: str) -> list[tuple[str, Path]]:
    """(path in the artifact, source file) for every file of the component's artifact except
    requirements.txt (the wheels included), sorted by path."""
    package = component_package(name)
    sources = {**SHARED, package.name: package}
    files = [
        (archived, path)
        for top, source in sources.items()
        for archived, path in _walk(top, source)
        if archived not in LEFT_OUT
    ]
    files += [(f"{WHEELS_DIR}/{w.name}", w) for w in wheelhouse(component_extras(name)).wheels]
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
    files = artifact_files(name)
    requirements = wheelhouse(component_extras(name)).requirements.encode()
    entries = sorted([*((archived, path) for archived, path in files), ("requirements.txt", None)])
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
            for archived, path in entries:
                entry = zipfile.ZipInfo(archived, _FIXED_TIME)
                entry.external_attr = 0o644 << 16
                # Wheels are zips already: stored as they are (deflating them again gains
                # nothing and costs the build's time).
                entry.compress_type = (
                    zipfile.ZIP_STORED if archived.endswith(".whl") else zipfile.ZIP_DEFLATED
                )
                archive.writestr(entry, requirements if path is None else path.read_bytes())
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


def source_components() -> list[str]:
    """The components built from source (edge_components/<name>/src/<package>)."""
    return sorted({path.parents[2].name for path in COMPONENTS_DIR.glob("*/src/*/__init__.py")})


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
    parser.add_argument(
        "--fetch-wheels",
        action="store_true",
        help="only fill the wheel cache for every component built from source, and exit",
    )
    args = parser.parse_args(argv)
    try:
        if args.fetch_wheels:
            for extras in sorted({component_extras(name) for name in source_components()}):
                print(wheelhouse(extras).directory)
            return
        print(build_component(args.name, args.out, args.version))
    except BuildError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
