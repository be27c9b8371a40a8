"""The current models, swapped in place when their components update.

Greengrass replaces a model component's artifact directory on a deployment; `ModelHandle.refresh`
notices a changed manifest, loads the new model beside the old one and swaps only when it loaded
and verified (checksums, feature order). A broken update is logged and the old model keeps
serving. The predictor's feature state is not touched by a swap. `AnomalyModelHandle` does the
same for the AnomalyModel component's ``anomaly_model.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from edge_runtime.anomaly_detector import MODEL_FILE, AnomalyModelError, AnomalyModelSet
from edge_runtime.model_runtime import MANIFEST, Model, ModelError, load_model

log = logging.getLogger(__name__)


class ModelHandle:
    def __init__(
        self,
        model_dir: Path,
        *,
        loader: Callable[[Path], Model] = load_model,
    ) -> None:
        self.model_dir = Path(model_dir)
        self._loader = loader
        self._stamp: tuple[int, int] | None = None
        self.model: Model | None = None
        self.swaps = 0
        self.refresh()

    def _manifest_stamp(self) -> tuple[int, int] | None:
        try:
            stat = (self.model_dir / MANIFEST).stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def refresh(self) -> bool:
        """Load the model again if its manifest changed; True when a new model was swapped in."""
        stamp = self._manifest_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            model = self._loader(self.model_dir)
        except (ModelError, OSError) as exc:
            self._stamp = stamp  # do not retry the same broken files on every poll
            log.error(
                "model update rejected, keeping the current model",
                extra={"model_dir": str(self.model_dir), "error": str(exc)},
            )
            return False
        previous = self.model
        self.model, self._stamp = model, stamp
        if previous is not None:
            self.swaps += 1
        log.info(
            "failure model loaded",
            extra={
                "model_version": model.manifest.model_version,
                "backend": model.backend,
                "previous": previous.manifest.model_version if previous else None,
            },
        )
        return True


class AnomalyModelHandle:
    """The anomaly detector's model set, reloaded when ``anomaly_model.json`` changes."""

    def __init__(
        self,
        model_dir: Path,
        *,
        loader: Callable[[Path], AnomalyModelSet] = AnomalyModelSet.load,
    ) -> None:
        self.model_dir = Path(model_dir)
        self._loader = loader
        self._stamp: tuple[int, int] | None = None
        self.models: AnomalyModelSet | None = None
        self.refresh()

    def _stamp_now(self) -> tuple[int, int] | None:
        try:
            stat = (self.model_dir / MODEL_FILE).stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def refresh(self) -> bool:
        """Load the model set again if its file changed; True when a new one was swapped in."""
        stamp = self._stamp_now()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            models = self._loader(self.model_dir)
        except (AnomalyModelError, OSError) as exc:
            self._stamp = stamp
            log.error(
                "anomaly model update rejected, keeping the current one",
                extra={"model_dir": str(self.model_dir), "error": str(exc)},
            )
            return False
        previous = self.models
        self.models, self._stamp = models, stamp
        log.info(
            "anomaly model loaded",
            extra={
                "model_version": models.model_version,
                "machines": len(models.machines),
                "previous": previous.model_version if previous else None,
            },
        )
        return True
