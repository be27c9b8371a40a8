"""Build the compact-batch decoder jar (`'format' = 'iiot-batch'`) without Maven.

The Java sources under `kda_sql/decoder/src` compile against the jars of a Flink install: the
PyFlink wheel's `pyflink/lib` locally (`flink_lib_jars()`), the same Flink version as the
Managed Flink runtime the application deploys (`kda_sql.flink_env.FLINK_VERSION`). Only the
standard library is used here, so `.venv-flink`'s interpreter (the connected run's Flink job)
and the project's environment (tests, bench, the CDK app) build it alike.

`build_jar` caches by content: the jar's name carries a digest of the sources, the resources
and the compiler's version, and a jar already built with that name is returned as is.
`merge_jars` makes one jar of several (the Kinesis SQL connector and this decoder, say): a
Managed Flink Python application names a single `jarfile`, and both jars register table
factories in `META-INF/services`, whose lines must be concatenated, not overwritten.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

DECODER_DIR = Path(__file__).resolve().parent
SOURCE_DIR = DECODER_DIR / "src"
RESOURCE_DIR = DECODER_DIR / "resources"
JAR_PREFIX = "iiot-flink-decoder-"
FORMAT_IDENTIFIER = "iiot-batch"
JAVA_RELEASE = "11"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: the same sources give the same jar
_SERVICES = "META-INF/services/"


class DecoderBuildError(RuntimeError):
    """The decoder could not be compiled or packaged; the message says why."""


def _inputs() -> list[Path]:
    return sorted(
        [*SOURCE_DIR.rglob("*.java"), *(p for p in RESOURCE_DIR.rglob("*") if p.is_file())]
    )


def _javac() -> str:
    for candidate in (
        Path(os.environ["JAVA_HOME"]) / "bin" / "javac" if os.environ.get("JAVA_HOME") else None,
        shutil.which("javac"),
    ):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise DecoderBuildError("javac not found: a JDK (11 or later) is needed to build the decoder")


def _digest(javac: str, classpath: Sequence[Path]) -> str:
    version = subprocess.run(  # noqa: S603 (our own argv)
        [javac, "-version"], capture_output=True, text=True, check=False
    )
    digest = hashlib.sha256((version.stdout + version.stderr).encode())
    digest.update(JAVA_RELEASE.encode())
    for path in _inputs():
        digest.update(str(path.relative_to(DECODER_DIR)).encode() + b"\0" + path.read_bytes())
    # the Flink jars compiled against, by name (their versions are in the names)
    digest.update("\0".join(sorted(p.name for p in classpath)).encode())
    return digest.hexdigest()[:16]


def flink_lib_jars(env_dir: Path | None = None) -> list[Path]:
    """The jars of a PyFlink install (`pyflink/lib/*.jar`): the decoder's compile classpath.

    Without `env_dir`: the PyFlink this interpreter imports, else `.venv-flink`."""
    if env_dir is None:
        try:
            import pyflink

            lib = Path(pyflink.__file__).resolve().parent / "lib"
        except ImportError:
            from kda_sql.flink_env import flink_env_dir

            return flink_lib_jars(flink_env_dir())
    else:
        found = sorted(env_dir.glob("lib/python3*/site-packages/pyflink/lib"))
        if not found:
            raise DecoderBuildError(f"{env_dir}: no PyFlink install (pyflink/lib) in it")
        lib = found[-1]
    jars = sorted(lib.glob("*.jar"))
    if not any(j.name.startswith("flink-dist") for j in jars):
        raise DecoderBuildError(f"{lib}: no flink-dist jar, not a Flink install")
    return jars


def _write_jar(out: Path, entries: dict[str, bytes]) -> None:
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as jar:
        manifest = b"Manifest-Version: 1.0\r\nCreated-By: kda_sql.decoder.build\r\n\r\n"
        jar.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF", _EPOCH), manifest)
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            jar.writestr(info, entries[name])
    partial.replace(out)


def build_jar(out_dir: Path, classpath: list[Path]) -> Path:
    """Compile the decoder (`javac --release 11` against `classpath`) into a jar in `out_dir`;
    return its path. A jar of the same sources already there is reused (safe in parallel)."""
    if not classpath:
        raise DecoderBuildError("empty classpath: pass the Flink jars (flink_lib_jars())")
    javac = _javac()
    out_dir.mkdir(parents=True, exist_ok=True)
    jar = out_dir / f"{JAR_PREFIX}{_digest(javac, classpath)}.jar"
    if jar.exists():
        return jar
    with (out_dir / f".{JAR_PREFIX}lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jar.exists():
            return jar
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
            classes = Path(tmp)
            command = [
                javac,
                "--release",
                JAVA_RELEASE,
                "-encoding",
                "UTF-8",
                "-Xlint:-options",
                "-cp",
                os.pathsep.join(str(p) for p in classpath),
                "-d",
                str(classes),
                *(str(p) for p in sorted(SOURCE_DIR.rglob("*.java"))),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
            if done.returncode != 0:
                raise DecoderBuildError(f"javac failed: {(done.stderr or done.stdout)[-4000:]}")
            entries = {
                str(p.relative_to(classes)).replace(os.sep, "/"): p.read_bytes()
                for p in classes.rglob("*.class")
            }
            for path in RESOURCE_DIR.rglob("*"):
                if path.is_file():
                    entries[str(path.relative_to(RESOURCE_DIR)).replace(os.sep, "/")] = (
                        path.read_bytes()
                    )
            _write_jar(jar, entries)
    return jar


def merge_jars(out: Path, jars: list[Path]) -> Path:
    """One jar holding every entry of `jars` (the first jar's copy wins on a clash), with the
    `META-INF/services` files concatenated so that every jar's factories stay registered; the
    jars' own signatures and manifests are left out (a merged jar cannot keep them)."""
    entries: dict[str, bytes] = {}
    services: dict[str, list[bytes]] = {}
    for path in jars:
        with zipfile.ZipFile(path) as jar:
            for info in jar.infolist():
                name = info.filename
                if info.is_dir() or name.upper() == "META-INF/MANIFEST.MF":
                    continue
                upper = name.upper()
                if upper.startswith("META-INF/") and upper.endswith((".SF", ".RSA", ".DSA")):
                    continue
                data = jar.read(info)
                if name.startswith(_SERVICES):
                    services.setdefault(name, []).append(data.rstrip(b"\n") + b"\n")
                else:
                    entries.setdefault(name, data)
    for name, parts in services.items():
        entries[name] = b"".join(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_jar(out, entries)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m kda_sql.decoder.build OUT_DIR`: build the jar against the local PyFlink."""
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else Path("build") / "decoder"
    try:
        print(build_jar(out_dir, flink_lib_jars()))
    except DecoderBuildError as exc:
        print(f"kda_sql.decoder.build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
