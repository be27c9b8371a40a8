"""Load a compiled failure model on a gateway and predict one feature vector at a time.

A model directory (what `ml_pipeline.compile` writes and `com.iiot.FailureModel` ships) holds
``manifest.json``, one native library per architecture (TL2cgen C code built with gcc) and the
XGBoost model as JSON. `load_model` picks the library built for this machine's architecture and
checks its SHA-256; with no matching library it falls back to XGBoost (slower, same answers),
and it refuses a directory whose files do not match the manifest.

Only numpy, ctypes and the standard library here (XGBoost is imported only for the fallback).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_runtime.features import FeatureSpec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# The alert threshold of a model whose training chose none (too little evidence for
# cross-validation, ml_pipeline/train.py) or whose manifest predates the field.
DEFAULT_ALERT_THRESHOLD = 0.8
XGBOOST_MODEL = "model.json"
ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


class ModelError(RuntimeError):
    """A model directory that cannot be used (missing files, checksum mismatch, bad manifest)."""


def machine_arch() -> str:
    machine = platform.machine().lower()
    return ARCH_ALIASES.get(machine, machine)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    model_version: str
    feature_names: list[str]
    feature_spec: FeatureSpec
    threshold: float
    libraries: dict[str, dict[str, str]]  # arch -> {"file", "sha256"}
    xgboost_model: dict[str, str]  # {"file", "sha256"}
    raw: dict[str, Any]

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        try:
            data = json.loads(path.read_text())
            spec = FeatureSpec.from_dict(data["feature_spec"])
            manifest = cls(
                model_version=str(data["model_version"]),
                feature_names=list(data["feature_names"]),
                feature_spec=spec,
                threshold=float(data.get("threshold", DEFAULT_ALERT_THRESHOLD)),
                libraries=dict(data.get("libraries", {})),
                xgboost_model=dict(data["xgboost_model"]),
                raw=data,
            )
        except FileNotFoundError as exc:
            raise ModelError(f"no {MANIFEST} in {directory}: is the model deployed?") from exc
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"{path} is not a valid model manifest: {exc!r}") from exc
        if manifest.feature_names != spec.names:
            raise ModelError(
                f"{path}: feature_names do not match the feature spec's order "
                f"({len(manifest.feature_names)} vs {len(spec.names)} names)"
            )
        return manifest


class Model(Protocol):
    manifest: Manifest
    backend: str

    def predict_one(self, features: npt.NDArray[np.float64]) -> float: ...

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...


def _load_private_copy(library: Path) -> ctypes.CDLL:
    """dlopen a private copy of `library`, then unlink the copy.

    The serving model must not depend on the deployed file staying as it is: a library
    rewritten in place while mapped crashes the process (SIGBUS), and dlopen of a path already
    loaded returns the old handle, so an in-place update would never take effect. The unlinked
    copy stays mapped for as long as the model is in use.
    """
    descriptor, name = tempfile.mkstemp(prefix="failure-model-", suffix=".so")
    try:
        with os.fdopen(descriptor, "wb") as copy, library.open("rb") as source:
            shutil.copyfileobj(source, copy)
        return ctypes.CDLL(name)
    finally:
        os.unlink(name)


class CompiledModel:
    """A TL2cgen-generated native library called through ctypes, one row at a time.

    The generated `predict(union Entry*, int, float*)` takes one row of 4-byte entries where a
    missing value is the integer -1 (not a NaN float), so NaNs are translated before the call.
    """

    backend = "compiled"

    def __init__(self, library: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        self._lib = _load_private_copy(library)
        self._lib.get_num_feature.restype = ctypes.c_int32
        n = int(self._lib.get_num_feature())
        if n != len(manifest.feature_names):
            raise ModelError(
                f"{library.name} expects {n} features, the manifest lists "
                f"{len(manifest.feature_names)}"
            )
        self._predict = self._lib.predict
        self._predict.restype = None
        self._predict.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self._row = np.zeros(n, dtype=np.float32)
        self._row_bits = self._row.view(np.int32)
        self._out = np.zeros(1, dtype=np.float32)
        self._row_ptr = self._row.ctypes.data
        self._out_ptr = self._out.ctypes.data

    def predict_one(self, features: npt.NDArray[np.float64]) -> float:
        row = self._row
        row[:] = features
        missing = row != row
        if missing.any():
            self._row_bits[missing] = -1
        self._out[0] = 0.0  # the generated code accumulates tree outputs into `result`
        self._predict(self._row_ptr, 0, self._out_ptr)
        return float(self._out[0])

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.array([self.predict_one(row) for row in np.atleast_2d(features)])


class XGBoostModel:
    """The fallback: the same model through XGBoost's own predictor."""

    backend = "xgboost"

    def __init__(self, model_file: Path, manifest: Manifest) -> None:
        import xgboost as xgb

        self.manifest = manifest
        self._xgb = xgb
        self.booster = xgb.Booster()
        self.booster.load_model(str(model_file))
        self.booster.set_param({"nthread": 1})

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        matrix = self._xgb.DMatrix(np.atleast_2d(features).astype(np.float32), missing=np.nan)
        return self.booster.predict(matrix).astype(np.float64)

    def predict_one(self, features: npt.NDArray[np.float64]) -> float:
        row = np.asarray(features, dtype=np.float32).reshape(1, -1)
        return float(self.booster.inplace_predict(row, missing=np.nan)[0])


def _verified(directory: Path, entry: dict[str, str]) -> Path:
    path = directory / entry["file"]
    if not path.is_file():
        raise ModelError(f"{path} is listed in the manifest but missing")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ModelError(
            f"{path.name}: checksum {digest[:12]} does not match the manifest's "
            f"{entry['sha256'][:12]}: redeploy the model component"
        )
    return path


def load_model(directory: Path, *, arch: str | None = None, prefer: str = "compiled") -> Model:
    """The best usable model in `directory`: the native library for `arch` (default: this
    machine's), else XGBoost. Raises ModelError when neither can be used."""
    directory = Path(directory)
    manifest = Manifest.read(directory)
    arch = ARCH_ALIASES.get(arch or machine_arch(), arch or machine_arch())
    entry = manifest.libraries.get(arch)
    if prefer == "compiled" and entry is not None:
        library = _verified(directory, entry)
        try:
            return CompiledModel(library, manifest)
        except OSError as exc:
            log.warning(
                "compiled model did not load, falling back to xgboost",
                extra={"library": library.name, "error": str(exc)},
            )
    elif prefer == "compiled":
        log.warning(
            "no compiled library for this architecture, falling back to xgboost",
            extra={"arch": arch, "available": sorted(manifest.libraries)},
        )
    model_file = _verified(directory, manifest.xgboost_model)
    try:
        return XGBoostModel(model_file, manifest)
    except ImportError as exc:
        raise ModelError(
            f"no compiled library for {arch} in {directory} and xgboost is not installed: "
            f"compile the model for {arch} (iiot ml compile --arch {arch})"
        ) from exc
