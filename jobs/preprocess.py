"""Raw CSV (file or folder) -> songs/, features/, rejects/, meta/ under the run root.

./spark-submit.sh preprocess [--set key=value ...]
"""

import sys

from songrec.preprocess import preprocess
from songrec.spark import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "preprocess", __doc__, lambda spark, cfg, args: preprocess(spark, cfg))


if __name__ == "__main__":
    sys.exit(main())
