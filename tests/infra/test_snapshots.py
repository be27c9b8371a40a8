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


# What other parts own changes with their code, not with the infrastructure: component
# versions (patch from the code's hash), the recipes and deployment configuration (from
# recipe.yaml and the catalog) and the generated pipeline definition. Their wiring is asserted
# in test_stacks.py; the snapshots keep the rest.
_COMPONENT_VERSION = re.compile(r'"(\d+\.\d+)\.\d{5,}"')
# The Flink package's key carries a hash of its content, the decoder jar's bytes included
# (javac's output, which can differ between JDK builds): asserted in test_stacks.py.
_FLINK_PACKAGE = re.compile(r"flink/[0-9a-f]{24}/")
_RUNTIME_OWNED = {"InlineRecipe", "PipelineDefinitionBody", "Merge"}


def _mask_owned(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: f"<from the runtime part: {key}>" if key in _RUNTIME_OWNED else _mask_owned(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_mask_owned(item) for item in node]
    return node


def masked(template: dict[str, Any]) -> Any:
    text = _ASSET_HASH.sub("<asset-hash>", json.dumps(_mask_owned(template)))
    text = _FLINK_PACKAGE.sub("flink/<content>/", text)
    return json.loads(_COMPONENT_VERSION.sub(r'"\1.<content>"', text))


@pytest.fixture
def snapshot_json(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.mark.parametrize("concern", CONCERNS)
def test_stack_snapshot(synth: Synth, concern: str, snapshot_json: SnapshotAssertion) -> None:
    assert masked(synth.template("dev", concern)) == snapshot_json
