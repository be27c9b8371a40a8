"""The engines the jobs run on: Sail (embedded, local), classic PySpark (tests), EMR (given).

Sail is a Spark Connect server written in Rust with Delta Lake built in; `sail_session` starts one
inside this process on 127.0.0.1 (a free port), connects a PySpark client and stops both on exit.
On EMR Serverless the job's own SparkSession (Apache Spark + delta-spark) is used instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Also the fewest partitions silver's Python passes (decoding, features) run in (`jobs`):
# Sail runs the partitions of a stage at once, two per core here.
SHUFFLE_PARTITIONS = 4
_CONNECT_MODE = "SPARK_CONNECT_MODE_ENABLED"  # pyspark's switch between Connect and classic


def use_connect(enabled: bool) -> None:
    """Point pyspark's functions at Spark Connect (Sail) or at the classic JVM session.

    pyspark builds Columns for one mode or the other from this process-wide switch, which a
    Connect session turns on; a process that compares both engines flips it before using each.
    """
    if enabled:
        os.environ[_CONNECT_MODE] = "1"
    else:
        os.environ.pop(_CONNECT_MODE, None)


@contextmanager
def sail_session(*, ip: str = "127.0.0.1", port: int = 0) -> Iterator[Any]:
    """A SparkSession on a Sail Spark Connect server this process starts and stops."""
    os.environ.setdefault("RUST_LOG", "warn")  # Sail logs every session at INFO otherwise
    from pysail.spark import SparkConnectServer
    from pyspark.sql import SparkSession

    server = SparkConnectServer(ip=ip, port=port)
    server.start(background=True)
    try:
        host, bound_port = server.listening_address
        # create(), not getOrCreate(): never reuse (and then stop) another server's session
        spark = SparkSession.builder.remote(f"sc://{host}:{bound_port}").create()
        try:
            spark.conf.set("spark.sql.session.timeZone", "UTC")
            spark.conf.set("spark.sql.shuffle.partitions", str(SHUFFLE_PARTITIONS))
            yield spark
        finally:
            spark.stop()
    finally:
        server.stop()


def classic_session(app_name: str = "iiot-lake-tests") -> Any:
    """Classic local PySpark (JVM) for comparing transforms; it has no Delta jars here."""
    import sys

    from pyspark.sql import SparkSession

    # Python workers must see this interpreter's packages (iiot, pyarrow) for mapInArrow.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    use_connect(False)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(SHUFFLE_PARTITIONS))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark
