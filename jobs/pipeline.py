"""Run preprocess -> train -> embed -> knn -> evaluate -> report in one Spark application.

    ./spark-submit.sh pipeline [--from STAGE] [--to STAGE] [--force] [--set key=value ...]

A stage whose inputs and config have not changed since its last successful run is skipped (and says
so); --force runs every selected stage anyway.
"""

import argparse
import sys

from songrec.pipeline import STAGE_NAMES, run_pipeline
from songrec.spark import job_main


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", choices=STAGE_NAMES, help="first stage to run")
    parser.add_argument("--to", dest="stop", choices=STAGE_NAMES, help="last stage to run")
    parser.add_argument("--force", action="store_true", help="run stages even when their inputs are unchanged")


def main(argv: list[str] | None = None) -> int:
    return job_main(
        argv, "pipeline", __doc__, lambda spark, cfg, args: run_pipeline(spark, cfg, args.start, args.stop, args.force),
        add_args=_args,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
