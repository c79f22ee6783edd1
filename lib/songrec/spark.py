"""SparkSession creation, logging set-up and the common shape of a job's ``main``."""

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.sql import SparkSession

from songrec.config import Config, ConfigError, add_config_args, config_from_args, log_effective
from songrec.errors import SongrecError

log = logging.getLogger(__name__)


def setup_logging(level: str = "INFO") -> None:
    """One log format for every job: time, level, module, message."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("py4j", "petastorm", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def session_conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """Set a runtime SQL conf for the body only; the session's previous value (or its absence) is restored."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def get_spark(cfg: Config, stage: str) -> tuple[SparkSession, bool]:
    """Return ``(session, created)``: the active SparkSession, or a new one for ``stage``.

    Under spark-submit the master and resources come from the submit options (spark-submit.sh);
    a session already running (tests, the pipeline job) is reused as it is and not stopped by us.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    builder = SparkSession.builder.appName(f"{cfg.spark.app_name}-{stage}")
    # Correctness, not tuning: parsing relies on try_cast under ANSI mode; keep it on explicitly.
    builder = builder.config("spark.sql.ansi.enabled", "true")
    builder = builder.config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
    for key, value in cfg.spark.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info(
        "Spark %s, master %s, default parallelism %d",
        spark.version, spark.sparkContext.master, spark.sparkContext.defaultParallelism,
    )  # fmt: skip
    return spark, True


def job_main(
    argv: list[str] | None,
    stage: str,
    doc: str | None,
    run: Callable[[SparkSession, Config, argparse.Namespace], object],
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse arguments, load the config, build the session, call ``run``, stop the session.

    Returns the process exit status: 0 done, 1 a user-fixable failure (one clear line, no
    traceback), 2 bad usage or config.
    """
    parser = argparse.ArgumentParser(
        prog=f"spark-submit.sh {stage}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2
    setup_logging(cfg.log_level)
    log_effective(cfg)
    spark, created = get_spark(cfg, stage)
    try:
        run(spark, cfg, args)
        return 0
    except SongrecError as exc:
        log.error("%s failed: %s", stage, exc)
        return 1
    finally:
        if created:
            spark.stop()


# What the executors must be able to import for every stage (native parts cannot ride --py-files).
EXECUTOR_MODULES = ("songrec", "numpy", "pandas", "pyarrow", "torch", "hnswlib", "petastorm")


def executor_environment(spark: SparkSession, tasks: int | None = None) -> list[dict]:
    """Where the executors run Python from and what they import (a deployment check, ``jobs/doctor.py``).

    Args:
        spark: the session.
        tasks: tasks to run (default: the default parallelism, so every executor core gets one).

    Returns:
        One report per task: ``{"executable", "prefix", "python", "cwd", "pid", "modules"}``, where
        ``modules`` maps each of :data:`EXECUTOR_MODULES` to ``"version @ file"`` or ``"ERROR ..."``.
    """
    modules = EXECUTOR_MODULES

    def probe(_: Iterator[Any]) -> Iterator[dict]:
        import importlib
        import os
        import platform
        import sys

        found = {}
        for name in modules:
            try:
                module = importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - reported, not raised: the point is to list every problem
                found[name] = f"ERROR {type(exc).__name__}: {exc}"
                continue
            found[name] = f"{getattr(module, '__version__', '?')} @ {getattr(module, '__file__', '?')}"
        yield {
            "executable": sys.executable, "prefix": sys.prefix, "python": platform.python_version(),
            "cwd": os.getcwd(), "pid": os.getpid(), "modules": found,
        }  # fmt: skip

    n = tasks or spark.sparkContext.defaultParallelism
    return spark.sparkContext.parallelize(range(n), n).mapPartitions(probe).collect()
