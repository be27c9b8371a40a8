"""Fixtures for the SensorBuffer tests: real mosquitto brokers on 127.0.0.1, simulated data."""

from __future__ import annotations

import ipaddress
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iiot.catalog import MetricCatalog
from iiot.contract import ReadingColumns
from local_platform.localbroker import BrokerError, Mosquitto
from local_platform.simulator import FleetConfig, FleetSimulator
from tests.edge.mqtt_helpers import Component


@pytest.fixture
def broker_factory() -> Iterator[Callable[..., Mosquitto]]:
    """Private mosquitto brokers on 127.0.0.1 (local_platform.localbroker), stopped by PID after the test."""
    brokers: list[Mosquitto] = []

    def make(*, persistent: bool = False, **access: Any) -> Mosquitto:
        """`access`: users= and tls= (local_platform.localbroker.Mosquitto.create)."""
        try:
            broker = Mosquitto.create(persistent=persistent, **access)
        except BrokerError as error:
            pytest.fail(str(error))
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


def simulated(
    catalog: MetricCatalog,
    *,
    machines: int = 4,
    minutes: float = 10,
    interval_ms: int = 1000,
    seed: int = 3,
) -> ReadingColumns:
    """A slice of simulated readings ending an hour ago (inside the clock-skew window)."""
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    config = FleetConfig(
        factories=1,
        machines_per_factory=machines,
        hours=minutes / 60,
        interval_ms=interval_ms,
        seed=seed,
        start=start,
    )
    return ReadingColumns.concat(list(FleetSimulator(config, catalog).chunks()))


@pytest.fixture(scope="session")
def simulate(catalog: MetricCatalog) -> Callable[..., ReadingColumns]:
    """simulate(machines=, minutes=, interval_ms=, seed=) -> ReadingColumns."""
    return lambda **kwargs: simulated(catalog, **kwargs)


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a broker certificate for 127.0.0.1 and a client certificate (PEM)."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture
def tls_files() -> Iterator[TlsFiles]:
    """Generated with `cryptography`, in a directory mosquitto's own user can read."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(tempfile.mkdtemp(prefix="iiot-tls-"))
    directory.chmod(0o755)
    now = datetime.now(UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (directory / f"{stem}.crt").write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM)
        )
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        for path in directory.iterdir():
            path.chmod(0o644)  # test keys, read by mosquitto's own user

    def builder(subject: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("iiot test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("iiot test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca, ca_key)
    for stem, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = builder(f"iiot test {stem}", key).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if usage is not None:
            certificate = certificate.add_extension(
                x509.ExtendedKeyUsage([usage]), critical=False
            ).add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        else:
            certificate = certificate.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        write(stem, certificate.sign(ca_key, hashes.SHA256()), key)
    yield TlsFiles(
        directory,
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def component_factory(tmp_path: Path):
    made: list[Component] = []

    def make(local_url: str, cloud_url: str, *extra: str) -> Component:
        component = Component(tmp_path, local_url, cloud_url, *extra)
        made.append(component)
        return component

    yield make
    for component in made:
        component.stop()
