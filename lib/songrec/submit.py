"""Turn the config's ``spark:`` section into spark-submit options (used by spark-submit.sh).

Prints the options NUL-separated on stdout, so that the shell passes every value on as one argument.
A config error is printed as one line on stderr with exit status 2.
"""

import argparse
import sys

from songrec.config import Config, ConfigError, load_config


def submit_options(cfg: Config, master: str | None = None) -> list[str]:
    """spark-submit options for ``cfg``; ``master`` (from --master) wins over ``spark.master``."""
    master = master or cfg.spark.master
    opts = ["--master", master, "--name", cfg.spark.app_name, "--driver-memory", cfg.spark.driver_memory]
    if not master.startswith("local"):
        opts += ["--executor-memory", cfg.spark.executor_memory, "--executor-cores", str(cfg.spark.executor_cores)]
        if cfg.spark.num_executors > 0:
            opts += ["--num-executors", str(cfg.spark.num_executors)]
    opts += ["--conf", f"spark.sql.shuffle.partitions={cfg.spark.shuffle_partitions}"]
    for key, value in cfg.spark.conf.items():
        opts += ["--conf", f"{key}={value}"]
    return opts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conf-file", required=True)
    parser.add_argument("--master")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.conf_file, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)  # noqa: T201 - the shell wrapper shows this line
        return 2
    sys.stdout.write("".join(f"{opt}\0" for opt in submit_options(cfg, args.master)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
