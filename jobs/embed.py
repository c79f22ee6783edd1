"""Encode every song in features/ with the trained encoder: embeddings/ (song_id, unit-length vector).

./spark-submit.sh embed [--set key=value ...]
"""

import sys

from songrec.embed import embed
from songrec.spark import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "embed", __doc__, lambda spark, cfg, args: embed(spark, cfg))


if __name__ == "__main__":
    sys.exit(main())
