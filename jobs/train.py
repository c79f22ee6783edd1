"""Train the song autoencoder on features/ with TorchDistributor (DDP ranks fed by Petastorm) and write model/.

    ./spark-submit.sh train [--resume] [--set key=value ...]

--resume continues from the newest checkpoint in train.checkpoint_dir (default root/_checkpoints/train).
"""

import argparse
import sys

from songrec.spark import job_main
from songrec.train import run_training


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")


def main(argv: list[str] | None = None) -> int:
    return job_main(
        argv, "train", __doc__, lambda spark, cfg, args: run_training(spark, cfg, resume=args.resume), _add_args
    )


if __name__ == "__main__":
    sys.exit(main())
