"""Compile the XGBoost model to native libraries for the gateways (Treelite + TL2cgen + gcc).

SageMaker Neo compiles XGBoost only up to 1.3 for edge targets and Edge Manager is gone, so the
model is compiled the way Neo does it for trees: Treelite imports the XGBoost model, TL2cgen
writes it as plain C, and gcc builds one shared library per gateway architecture (x86_64 with the
host's gcc, aarch64 with Debian's cross compiler ``aarch64-linux-gnu-gcc``). The output
directory is the `com.iiot.FailureModel` artifact: the libraries, the XGBoost model (fallback),
and a manifest naming the model version, the feature list and order, and each file's SHA-256.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_runtime.model_runtime import MANIFEST, XGBOOST_MODEL, machine_arch, sha256_file
from ml_pipeline.train import MODEL_FILE, TRAINING_FILE

COMPILERS = {"x86_64": ("x86_64-linux-gnu-gcc", "gcc"), "aarch64": ("aarch64-linux-gnu-gcc",)}
CFLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-fvisibility=default")


class CompileError(RuntimeError):
    """The model could not be compiled for an architecture (names what to install)."""


def compiler_for(arch: str) -> str:
    candidates = COMPILERS.get(arch)
    if candidates is None:
        raise CompileError(f"unknown architecture {arch!r}: use one of {sorted(COMPILERS)}")
    if arch == machine_arch():
        candidates = (*candidates, "cc")
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise CompileError(
        f"no C compiler for {arch}: install {candidates[0]} "
        f"(Debian: apt-get install gcc-{arch.replace('_', '-')}-linux-gnu)"
    )


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """TL2cgen's C++ logger writes to file descriptor 1; keep stdout for the command's JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def generate_c(model_file: Path, out_dir: Path) -> list[Path]:
    """TL2cgen's C sources for the XGBoost model (several translation units, built in parallel)."""
    import tl2cgen
    import treelite

    model = treelite.frontend.load_xgboost_model(str(model_file))
    with _stdout_to_stderr():
        tl2cgen.generate_c_code(model, dirpath=str(out_dir), params={"parallel_comp": 4})
    return sorted(out_dir.glob("*.c"))


def build_library(sources: list[Path], arch: str, out: Path) -> None:
    compiler = compiler_for(arch)
    command = [compiler, *CFLAGS, "-o", str(out), *map(str, sources), "-lm"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise CompileError(f"{Path(compiler).name} failed for {arch}: {result.stderr[-2000:]}")


def compile_model(
    model_dir: Path, out_dir: Path, arches: tuple[str, ...] = ("x86_64", "aarch64")
) -> dict[str, Any]:
    """Build the FailureModel artifact directory from a trained model directory."""
    import tl2cgen
    import treelite

    info = json.loads((model_dir / TRAINING_FILE).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / MODEL_FILE, out_dir / XGBOOST_MODEL)
    libraries: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="tl2cgen-") as scratch:
        sources = generate_c(model_dir / MODEL_FILE, Path(scratch))
        for arch in arches:
            name = f"failure_model-{arch}.so"
            build_library(sources, arch, out_dir / name)
            libraries[arch] = {"file": name, "sha256": sha256_file(out_dir / name)}
    manifest = {
        "model_version": info["model_version"],
        "feature_names": info["feature_names"],
        "feature_spec": info["feature_spec"],
        "threshold": info["threshold"],
        # which rule chose it (train.threshold_rule); absent from models trained before it
        "threshold_source": info.get("threshold_source", "unrecorded"),
        "libraries": libraries,
        "xgboost_model": {"file": XGBOOST_MODEL, "sha256": sha256_file(out_dir / XGBOOST_MODEL)},
        "toolchain": {
            "xgboost": info.get("xgboost_version"),
            "treelite": treelite.__version__,
            "tl2cgen": tl2cgen.__version__,
            "cflags": list(CFLAGS),
            "built_on": platform.machine(),
        },
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
