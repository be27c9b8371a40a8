"""Render the recipe's DefaultConfiguration block from the defaults and the metric catalog.

`python -m sensor_buffer.recipe` prints it; tests/edge/test_recipe.py checks recipe.yaml.
"""

from __future__ import annotations

from typing import Any

import yaml

from iiot.catalog import MetricCatalog, load_catalog
from sensor_buffer.config import default_configuration


def default_configuration_yaml(catalog: MetricCatalog, indent: int = 4) -> str:
    body = yaml.safe_dump(default_configuration(catalog), sort_keys=False)
    return "".join(" " * indent + line + "\n" for line in body.splitlines())


def recipe_default_configuration(recipe: dict[str, Any]) -> dict[str, Any]:
    """The DefaultConfiguration of a parsed recipe, without its accessControl."""
    document = dict(recipe["ComponentConfiguration"]["DefaultConfiguration"])
    document.pop("accessControl", None)
    return document


if __name__ == "__main__":
    print(default_configuration_yaml(load_catalog()), end="")
