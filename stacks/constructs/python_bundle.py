"""Bundle Python code and its dependencies on this machine, without Docker.

The asset directory gets the given source folders (the function or component code and the
`iiot` core) plus the dependencies installed by uv for the target platform (manylinux wheels
only, pinned by constraints.txt), so the result does not depend on the build machine's OS.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import BundlingOptions, DockerImage, ILocalBundling

from stacks.artifacts import ROOT

# Bundling always runs on this machine; CDK's BundlingOptions still wants an image to fall back
# to, and "scratch" (the empty image) makes any accidental Docker fallback fail at once.
NO_DOCKER = DockerImage.from_registry("scratch")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "tests", "*.egg-info")
CONSTRAINTS = ROOT / "constraints.txt"
# Finished bundles by content hash, reused by later syntheses (the dependency install is the
# slow part). Inside cdk.out, so `make clean` removes it and git ignores it.
BUNDLE_CACHE = ROOT / "cdk.out" / ".bundle-cache"


def staged_once(directory: Path, build: Callable[[Path], None]) -> Path:
    """`directory`, built by `build(partial)` the first time and reused after: it is published by
    renaming a finished partial, so an existing directory is complete (callers put a content hash
    in its name)."""
    if directory.is_dir():
        return directory
    partial = directory.with_name(f"{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    partial.rename(directory)
    return directory


def project_requirements(*extras: str, leave_out: Iterable[str] = ()) -> list[str]:
    """The core's dependencies plus the given extras of pyproject.toml, minus `leave_out`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"]]
    for extra in extras:
        names += project["optional-dependencies"][extra]
    skipped = set(leave_out)
    return sorted({name for name in names if name.split("[")[0] not in skipped})


def _files(folder: Path) -> Iterable[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def source_hash(
    copies: Sequence[tuple[Path, str]], requirements: Sequence[str], *extra: str
) -> str:
    """A content hash of everything that goes into the bundle (files, requirements, pins)."""
    digest = hashlib.sha256()
    for source, target in copies:
        for path in _files(source) if source.is_dir() else [source]:
            digest.update(f"{target}/{path.relative_to(source.parent)}".encode())
            digest.update(path.read_bytes())
    digest.update("\n".join(sorted(requirements)).encode())
    if requirements:
        digest.update(CONSTRAINTS.read_bytes())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()


@jsii.implements(ILocalBundling)
class LocalPythonBundling:
    """Copy `copies` (source, target folder in the bundle: "" for the root), write `files`
    (relative path -> text) and install `requirements` for `platform` / `python_version`."""

    def __init__(
        self,
        *,
        copies: Sequence[tuple[Path, str]],
        requirements: Sequence[str],
        platform: str,
        python_version: str,
        files: Mapping[str, str] | None = None,
        exclude: Sequence[str] = (),
        cache_key: str | None = None,
    ) -> None:
        self.exclude = tuple(exclude)
        self.cache_key = cache_key
        self.copies = tuple(copies)
        self.files = dict(files or {})
        self.requirements = tuple(requirements)
        self.platform = platform
        self.python_version = python_version

    def try_bundle(self, output_dir: str, options: Any) -> bool:
        del options  # the Docker-side options (image, command) do not apply here
        if self.cache_key is None:
            self.bundle(Path(output_dir))
        else:
            cached = staged_once(BUNDLE_CACHE / self.cache_key, self.bundle)
            shutil.copytree(cached, output_dir, dirs_exist_ok=True)
        return True

    def bundle(self, out: Path) -> None:
        """Write the bundle into `out` (created if missing)."""
        for source, target in self.copies:
            destination = out / target / source.name if target else out / source.name
            if source.is_dir():
                shutil.copytree(source, destination, ignore=_IGNORED, dirs_exist_ok=True)
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
        for relative, content in self.files.items():
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / relative).write_text(content)
        if self.requirements:
            command = [
                sys.executable,
                "-m",
                "uv",
                "pip",
                "install",
                "--quiet",
                "--target",
                str(out),
                "--python-platform",
                self.platform,
                "--python-version",
                self.python_version,
                "--only-binary",
                ":all:",
                "--constraint",
                str(CONSTRAINTS),
                *self.requirements,
            ]
            with tempfile.TemporaryDirectory() as scratch:
                if self.exclude:
                    excludes = Path(scratch) / "excludes.txt"
                    excludes.write_text("\n".join(self.exclude) + "\n")
                    command[-len(self.requirements) : -len(self.requirements)] = [
                        "--excludes",
                        str(excludes),
                    ]
                result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
            if result.returncode != 0:
                raise RuntimeError(
                    f"installing {', '.join(self.requirements)} for {self.platform} failed "
                    f"(uv exit {result.returncode}): {result.stderr.strip()[-2000:]}"
                )


def local_bundling(bundling: LocalPythonBundling) -> BundlingOptions:
    """BundlingOptions that only ever bundle locally."""
    return BundlingOptions(image=NO_DOCKER, local=bundling, command=["false"])
