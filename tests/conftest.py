"""Shared fixtures: one local-mode SparkSession per test session, small configs, small runs.

Expensive upstream outputs (a generated + preprocessed run, a trained model) are built once per test
session and shared read-only; a test that modifies a run copies it first.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from songrec.config import Config, load_config  # noqa: E402


@pytest.fixture(scope="session")
def spark():
    """local[2] SparkSession with few shuffle partitions and no UI; stopped at the end."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("songrec-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.driver.memory", "3g")
        .config("spark.sql.ansi.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def make_cfg(base: Path, *overrides: str) -> Config:
    """conf/test.yaml with input and root under ``base`` plus ``overrides``."""
    return load_config(
        ROOT / "conf" / "test.yaml",
        [f"input={base / 'raw' / 'spotify_dataset.csv'}", f"root={base / 'run'}", *overrides],
    )


@pytest.fixture()
def cfg(tmp_path: Path) -> Config:
    """A fresh small config rooted in this test's tmp_path."""
    return make_cfg(tmp_path)


@pytest.fixture(scope="session")
def generated(spark, tmp_path_factory) -> Config:
    """A small generated CSV (conf/test.yaml size) with its truth file; shared, do not modify."""
    from songrec.generate import generate

    cfg = make_cfg(tmp_path_factory.mktemp("generated"))
    generate(spark, cfg)
    return cfg


@pytest.fixture(scope="session")
def preprocessed(spark, generated: Config) -> Config:
    """``generated`` run through preprocess: songs/, features/, rejects/, meta/; shared, do not modify."""
    from songrec.preprocess import preprocess

    preprocess(spark, generated)
    return generated


@pytest.fixture(scope="session")
def trained(spark, preprocessed: Config) -> Config:
    """``preprocessed`` plus model/ from a 2-rank CPU training run; shared, do not modify."""
    from songrec.train import run_training

    run_training(spark, preprocessed)
    return preprocessed


def copy_run(cfg: Config, dest: Path, *overrides: str) -> Config:
    """Copy a run root (keeping the relative links of committed tables) and return a config for it."""
    import shutil

    from songrec.config import local_path

    shutil.copytree(local_path(cfg.path()), dest / "run", symlinks=True)
    return load_config(ROOT / "conf" / "test.yaml", [f"input={cfg.input}", f"root={dest / 'run'}", *overrides])


@pytest.fixture(scope="session")
def finished(spark, trained: Config, tmp_path_factory) -> Config:
    """A complete small run: ``trained`` copied, then embed -> knn -> evaluate -> report; shared, read-only."""
    from songrec.pipeline import run_pipeline

    cfg = copy_run(trained, tmp_path_factory.mktemp("finished"))
    run_pipeline(spark, cfg, start="embed")
    return cfg
