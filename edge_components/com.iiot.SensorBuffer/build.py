"""GDK custom build: zip the shared core, the catalog and this component into one artifact.

`gdk component build` runs this from the component folder. The zip holds `iiot/`, `config/`,
`sensor_buffer/` and `requirements.txt` (pinned from the repository's constraints.txt), which
the recipe's Install step installs into a virtual environment on the gateway.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NAME = "com.iiot.SensorBuffer"
PACKAGES = {
    "iiot": ROOT / "iiot",
    "config": ROOT / "config",
    "sensor_buffer": HERE / "src" / "sensor_buffer",
}
REQUIREMENTS = ("msgspec", "numpy", "pyyaml", "zstandard", "typer", "rich", "awsiotsdk", "awscrt")


def pinned_requirements() -> str:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(0)
    return "".join(pins.get(name, name) + "\n" for name in REQUIREMENTS)


def build(version: str = "NEXT_PATCH", out: Path | None = None) -> Path:
    """Write greengrass-build/{recipes,artifacts} (GDK's layout); return the artifact zip."""
    out = out or HERE / "greengrass-build"
    artifacts = out / "artifacts" / NAME / version
    artifacts.mkdir(parents=True, exist_ok=True)
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "recipe.yaml", out / "recipes" / "recipe.yaml")
    target = artifacts / f"{NAME}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for package, source in PACKAGES.items():
            for path in sorted(source.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    archive.write(path, f"{NAME}/{package}/{path.relative_to(source)}")
        archive.writestr(f"{NAME}/requirements.txt", pinned_requirements())
    return target


if __name__ == "__main__":
    print(build())
