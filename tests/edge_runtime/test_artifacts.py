"""Each component's artifact imports and starts from a clean virtual environment.

What a gateway does with it, minus Greengrass: build the artifact, unzip it, run the recipe's own
Install step (a virtual environment, the artifact's wheels installed with no package index and
every hash checked) without any network (a network namespace of its own where the machine allows
one; `pip --isolated --no-index` in any case), import every module it ships, then run the component's entry point with the MQTT transport
against a private mosquitto until both its clients connect, and stop it with SIGTERM (what
Greengrass sends): it must exit cleanly. Nothing of this repository is on that environment's
path: only the unpacked artifact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from edge_runtime.build import COMPONENTS_DIR, build_component
from local_platform.localbroker import free_port

STARTUP_TIMEOUT_S = 60.0
# Every module the artifact ships; those of the features and the model runtime need only numpy.
IMPORT_ALL = """
import importlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
for path in sorted(root.glob("*/**/*.py")):
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__main__":
        continue
    importlib.import_module(".".join(p for p in parts if p != "__init__"))
print("imported")
"""


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


# The Install step runs with no network at all where the machine lets a test make a network
# namespace (root, or user namespaces); elsewhere `--isolated --no-index` keeps pip off the net.
NO_NETWORK = ["unshare", "--net"] if _unshare_works() else []


def install_step(name: str, work: Path, decompressed: Path) -> list[str]:
    """The recipe's Install script for this machine's architecture, with Greengrass' paths
    filled in and this machine's Python 3.11 as `python3.11`, as a command without network."""
    manifests = yaml.safe_load((COMPONENTS_DIR / name / "recipe.yaml").read_text())["Manifests"]
    machine = {"x86_64": "amd64", "aarch64": "aarch64"}[os.uname().machine]
    (manifest,) = [m for m in manifests if m["Platform"]["architecture"] == machine]
    script = (
        manifest["Lifecycle"]["Install"]["Script"]
        .replace("{work:path}", str(work))
        .replace("{artifacts:decompressedPath}", str(decompressed))
    )
    assert script.startswith("python3.11 ")
    return [*NO_NETWORK, "sh", "-c", f"{sys.executable} {script.removeprefix('python3.11 ')}"]


def entry_point(name: str, broker_url: str, work: Path) -> list[str]:
    """The component's own entry point, in its local (MQTT) mode."""
    if name == "com.iiot.SensorBuffer":
        return [
            "-m",
            "sensor_buffer",
            "run",
            "--factory",
            "F01",
            "--broker",
            broker_url,
            "--data-dir",
            str(work / "data"),
        ]
    if name == "com.iiot.OpcUaCollector":
        # A PLC that is not there (yet): the collector runs, connected to the broker, retrying.
        config = work / "collector.json"
        plc = {
            "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/plc",
            "nodes": [
                {"nodeId": "ns=2;s=Pump1.Rpm", "machineId": "m1", "sensorId": "s1", "metric": "rpm"}
            ],
        }
        config.write_text(json.dumps({"factoryId": "F01", "plcs": {"line1": plc}}))
        return ["-m", "opcua_collector", "run", "--broker", broker_url, "--config", str(config)]
    config = work / "predictor.json"
    config.write_text(json.dumps({"factoryId": "F01", "modelDir": str(work / "no-model-yet")}))
    return ["-m", "failure_predictor.main", "--mqtt", broker_url, "--config", str(config)]


def connections(log: Path) -> int:
    count = 0
    for line in log.read_text().splitlines():
        try:
            count += json.loads(line).get("message") == "mqtt connected"
        except ValueError:
            continue
    return count


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["com.iiot.SensorBuffer", "com.iiot.FailurePredictor", "com.iiot.OpcUaCollector"]
)
def test_the_artifact_imports_and_starts_in_a_clean_virtual_environment(
    tmp_path: Path, broker, name: str
) -> None:
    began = time.perf_counter()
    decompressed = tmp_path / "artifacts"
    unpacked = decompressed / name  # as Greengrass unpacks <name>.zip
    zipfile.ZipFile(build_component(name, tmp_path / "build")).extractall(unpacked)
    work = tmp_path / "work"
    python = str(work / "venv" / "bin" / "python")
    install = subprocess.run(
        install_step(name, work, decompressed),
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    installed = time.perf_counter()
    # Only the artifact on the path, as the recipe sets it; run from elsewhere.
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(unpacked)}
    imported = subprocess.run(
        [python, "-c", IMPORT_ALL, str(unpacked)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-3000:]
    log = tmp_path / "component.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [python, *entry_point(name, broker.url, tmp_path)],
            cwd=tmp_path, env=environment, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while connections(log) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert connections(log) == 2, log.read_text()[-3000:]  # local and cloud clients
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
    assert "Traceback" not in log.read_text()
    print(
        f"\n{name}: venv and requirements {installed - began:.1f} s, "
        f"import, start and stop {time.perf_counter() - installed:.1f} s"
    )


@pytest.mark.slow
def test_a_wheel_that_does_not_match_its_hash_fails_the_install(tmp_path: Path) -> None:
    """The Install step checks every wheel: one changed after the build is refused."""
    decompressed = tmp_path / "artifacts"
    name = "com.iiot.SensorBuffer"
    unpacked = decompressed / name
    zipfile.ZipFile(build_component(name, tmp_path / "build")).extractall(unpacked)
    (wheel,) = (unpacked / "wheels").glob("mdurl-*.whl")
    wheel.write_bytes(wheel.read_bytes() + b"\0")  # still a valid zip: only the hash tells
    install = subprocess.run(
        install_step(name, tmp_path / "work", decompressed),
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert install.returncode != 0
    assert "DO NOT MATCH THE HASHES" in install.stderr
    assert not (
        tmp_path / "work" / "venv" / "lib" / "python3.11" / "site-packages" / "numpy"
    ).exists()
