"""Write the stand-in dataset (the raw CSV, or a folder of part CSVs) and its truth file to ``input``.

./spark-submit.sh generate [--set generate.rows=551443] [--set generate.parts=8] [--set input=/data/raw.csv]
"""

import sys

from songrec.generate import generate
from songrec.spark import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "generate", __doc__, lambda spark, cfg, args: generate(spark, cfg))


if __name__ == "__main__":
    sys.exit(main())
