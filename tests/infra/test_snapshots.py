"""One snapshot per stack (dev), asset hashes masked: a diff shows what a change deploys.

Update after an intended change: `pytest tests/infra --snapshot-update`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension

from tests.infra.conftest import Synth

_ASSET_HASH = re.compile(r"[0-9a-f]{64}")
CONCERNS = (
    "network",
    "lake",
    "ingestion",
    "alerting",
    "iot",
    "warehouse",
    "timeseries",
    "monitoring",
    "streaming",
    "edge",
    "ml",
)


def masked(template: dict[str, Any]) -> Any:
    return json.loads(_ASSET_HASH.sub("<asset-hash>", json.dumps(template)))


@pytest.fixture
def snapshot_json(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.mark.parametrize("concern", CONCERNS)
def test_stack_snapshot(synth: Synth, concern: str, snapshot_json: SnapshotAssertion) -> None:
    assert masked(synth.template("dev", concern)) == snapshot_json
