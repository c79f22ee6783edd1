"""Check that the executors can run songrec: their Python, and where songrec, torch, pyarrow, hnswlib
and petastorm come from (one log line per task). Exit status 1 when an executor cannot import one.

    ./spark-submit.sh --master spark://master:7077 --pack doctor [--tasks N]

With ``--pack`` every executable should be ``.../environment/bin/python`` (the unpacked venv-pack
archive) and songrec should come from ``songrec.zip`` (``--py-files``).
"""

import argparse
import json
import logging
import sys

from pyspark.sql import SparkSession

from songrec.config import Config
from songrec.errors import SongrecError
from songrec.spark import executor_environment, job_main

log = logging.getLogger("songrec.doctor")


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=0, help="tasks to probe (default: the default parallelism)")


def _run(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> None:
    reports = executor_environment(spark, args.tasks or None)
    broken = []
    for report in reports:
        log.info("executor environment: %s", json.dumps(report, sort_keys=True))
        broken += [f"{name}: {v}" for name, v in report["modules"].items() if v.startswith("ERROR")]
    if broken:
        raise SongrecError("executors cannot import: " + "; ".join(sorted(set(broken))))
    log.info("%d tasks: every executor imports %s", len(reports), ", ".join(reports[0]["modules"]) if reports else "-")


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "doctor", __doc__, _run, add_args=_args)


if __name__ == "__main__":
    sys.exit(main())
