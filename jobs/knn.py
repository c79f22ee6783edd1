"""Build the neighbour table: sharded hnswlib indexes over embeddings/, merged to a global top-K per song.

./spark-submit.sh knn [--set key=value ...]
"""

import sys

from songrec.knn import build_neighbors
from songrec.spark import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "knn", __doc__, lambda spark, cfg, args: build_neighbors(spark, cfg))


if __name__ == "__main__":
    sys.exit(main())
