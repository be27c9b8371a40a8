"""A PLC for the collector's tests: an asyncua server on 127.0.0.1, run as its own process.

    python tests/edge/opcua_plc.py PORT [--generation N] [--period-ms MS] [--secure DIR]
                                        [--user NAME:PASSWORD]

Namespace `urn:iiot:test-plc` (index 2 at generation 0, index 3 from generation 1 on: the
index moves across a restart), object `Pump1` with:

    Temperature  Double  40 + 10*N + (i % 20) * 0.5   degC       (N: the generation)
    Vibration    Float   2.0 + (i % 10) * 0.25        mm/s
    Rpm          Int32   1500 + i % 50                rpm
    Overheat     Double  999.0: beyond temperature's valid range (a broken sensor)
    Broken       Double  50.0 with StatusCode BadSensorFailure
    Label        String  "running": not a number

Every node's value changes every `period` (i counts the updates), with the PLC's clock as the
source timestamp. It prints `ready PORT` once it listens and runs until SIGTERM or SIGKILL (a
PLC's power cut); the tests start it again on the same port as the PLC coming back. With
`--user`, the PLC admits that user with that password only (no anonymous sessions): a wrong
password is refused with BadUserAccessDenied, a session without a user with
BadIdentityTokenRejected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

NAMESPACE = "urn:iiot:test-plc"


def values(i: int, generation: int) -> dict[str, tuple[object, ua.VariantType]]:
    return {
        "Temperature": (40.0 + 10 * generation + (i % 20) * 0.5, ua.VariantType.Double),
        "Vibration": (2.0 + (i % 10) * 0.25, ua.VariantType.Float),
        "Rpm": (1500 + i % 50, ua.VariantType.Int32),
        "Overheat": (999.0 + (i % 2), ua.VariantType.Double),
        "Broken": (50.0 + (i % 2), ua.VariantType.Double),
        "Label": (f"running {i}", ua.VariantType.String),
    }


class OneUser(UserManager):
    """Admits one user with one password, nobody else."""

    def __init__(self, name: str, password: str) -> None:
        self.name, self.password = name, password

    def get_user(
        self,
        iserver: object,
        username: str | None = None,
        password: str | None = None,
        certificate: object = None,
    ) -> User | None:
        if username == self.name and password == self.password:
            return User(role=UserRole.User, name=username)
        return None


async def serve(
    port: int, generation: int, period_s: float, secure: Path | None, user: str | None = None
) -> None:
    name, _, password = (user or "").partition(":")
    server = Server(user_manager=OneUser(name, password) if user else None)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plc")
    if user:
        server.set_security_IDs(["Username"])
    if secure is None:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    else:
        # Basic256Sha256 only, with a self-signed certificate written to `secure` (the client
        # may pin it); a client connects only with its own certificate, signed and encrypted.
        key, cert = secure / "plc-key.pem", secure / "plc-cert.der"
        await setup_self_signed_certificate(
            key, cert, "urn:iiot:test-plc", "127.0.0.1", [ExtendedKeyUsageOID.SERVER_AUTH], {}
        )
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    # A PLC whose project changed between two power-ups publishes its namespaces in another
    # order: from generation 1 on, another namespace comes first and this one moves to index 3,
    # so only a collector that resolves `nsu=` node ids at every session reads it right.
    if generation > 0:
        await server.register_namespace(f"urn:iiot:test-plc-library:{generation}")
    index = await server.register_namespace(NAMESPACE)
    pump = await server.nodes.objects.add_object(ua.NodeId("Pump1", index), "Pump1")
    variables = {}
    for name, (value, kind) in values(0, generation).items():
        variables[name] = await pump.add_variable(
            ua.NodeId(f"Pump1.{name}", index), name, ua.Variant(value, kind)
        )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        print(f"ready {port}", flush=True)
        i = 0
        while not stop.is_set():
            i += 1
            now = datetime.now(UTC)
            for name, (value, kind) in values(i, generation).items():
                status = (
                    ua.StatusCodes.BadSensorFailure if name == "Broken" else ua.StatusCodes.Good
                )
                await variables[name].write_value(
                    ua.DataValue(
                        ua.Variant(value, kind),
                        StatusCode=ua.StatusCode(status),
                        SourceTimestamp=now,
                        ServerTimestamp=now,
                    )
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--generation", type=int, default=0)
    parser.add_argument("--period-ms", type=float, default=100.0)
    parser.add_argument("--secure", type=Path, help="Basic256Sha256 only; its certificate here")
    parser.add_argument("--user", help="NAME:PASSWORD, the only user admitted")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.generation, args.period_ms / 1000, args.secure, args.user))
    sys.exit(0)


if __name__ == "__main__":
    main()
