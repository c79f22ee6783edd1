"""Measure the neighbour table: recall against exact search, relevance against raw-feature baselines.

./spark-submit.sh evaluate [--set key=value ...]
"""

import sys

from songrec.evaluate import evaluate
from songrec.spark import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "evaluate", __doc__, lambda spark, cfg, args: evaluate(spark, cfg))


if __name__ == "__main__":
    sys.exit(main())
