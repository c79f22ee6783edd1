"""Turn the config's ``spark:`` section into spark-submit options (used by spark-submit.sh).

Prints the options NUL-separated on stdout, so that the shell passes every value on as one argument.
A config error is printed as one line on stderr with exit status 2.

With ``--pack ARCHIVE`` (``spark-submit.sh --pack``) the options also ship the venv-pack archive the
way Spark's Python packaging guide does: ``--archives ARCHIVE#environment`` and the executors' Python
set to ``./environment/bin/python`` (the archive unpacked in each executor's working directory); in
client mode the driver keeps this machine's Python (``--driver-python``).
"""

import argparse
import sys

from songrec.config import Config, ConfigError, load_config

# Where an executor finds the Python of the unpacked archive (``--archives ...#environment``).
PACKED_PYTHON = "./environment/bin/python"


def submit_options(
    cfg: Config, master: str | None = None, archive: str | None = None, driver_python: str | None = None
) -> list[str]:
    """spark-submit options for ``cfg``; ``master`` (from --master) wins over ``spark.master``.

    Args:
        cfg: the config (its ``spark:`` section).
        master: the master URL from the command line, if any.
        archive: a venv-pack archive to ship to the executors and run their Python from.
        driver_python: the driver's Python when ``archive`` is given (client mode: the driver runs here,
            not in an executor's working directory); ``None`` in cluster deploy mode.

    Raises:
        ConfigError: ``archive`` with a local master (there are no executors to ship it to).
    """
    master = master or cfg.spark.master
    opts = ["--master", master, "--name", cfg.spark.app_name, "--driver-memory", cfg.spark.driver_memory]
    if not master.startswith("local"):
        opts += ["--executor-memory", cfg.spark.executor_memory, "--executor-cores", str(cfg.spark.executor_cores)]
        if cfg.spark.num_executors > 0:
            opts += ["--num-executors", str(cfg.spark.num_executors)]
    opts += ["--conf", f"spark.sql.shuffle.partitions={cfg.spark.shuffle_partitions}"]
    for key, value in cfg.spark.conf.items():
        opts += ["--conf", f"{key}={value}"]
    if archive:
        if master.startswith("local"):
            raise ConfigError(f"--pack ships the environment to executors; master {master} has none (drop --pack)")
        opts += ["--archives", f"{archive}#environment"]
        # spark.pyspark.python is what the executors' Python workers run (the driver passes it on with
        # every Python function); spark.executorEnv.PYSPARK_PYTHON covers code that reads the variable.
        opts += ["--conf", f"spark.pyspark.python={PACKED_PYTHON}"]
        opts += ["--conf", f"spark.executorEnv.PYSPARK_PYTHON={PACKED_PYTHON}"]
        if driver_python:
            opts += ["--conf", f"spark.pyspark.driver.python={driver_python}"]
    return opts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conf-file", required=True)
    parser.add_argument("--master")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--pack", metavar="ARCHIVE", help="venv-pack archive to ship as ./environment")
    parser.add_argument("--driver-python", help="the driver's Python with --pack (client deploy mode)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.conf_file, args.overrides)
        opts = submit_options(cfg, args.master, archive=args.pack, driver_python=args.driver_python)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)  # noqa: T201 - the shell wrapper shows this line
        return 2
    sys.stdout.write("".join(f"{opt}\0" for opt in opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
