"""Pack the project's virtual environment with venv-pack, for ``spark-submit --archives env.tar.gz#environment``.

Native dependencies (torch, pyarrow, hnswlib) cannot travel with ``--py-files``; Spark's Python
packaging guide ships the whole venv as an archive that each executor unpacks into its working
directory and runs ``./environment/bin/python`` from. From the repository root::

    .venv/bin/python -m songrec.pack --output build/env.tar.gz      # what `make pack` runs

songrec itself is installed editable (``pip install -e .``), which venv-pack refuses outright (an
editable ``.pth`` points outside the venv). Our code travels with ``--py-files build/songrec.zip``
anyway, so it is left out of the archive: the editable ``.pth``, its dist-info and the ``songrec``
console script. Any *other* editable package is still an error, because it would be missing on the
executors. The archive's ``bin/python`` is a link to the base interpreter this venv was made from
(venv-pack's documented limit): workers need the same Python 3.11 at the same path.
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
# Left out: our own editable install (it ships as build/songrec.zip) and the JVM half of pyspark
# (executors run the cluster's Spark jars; the archive only needs pyspark's Python side).
EXCLUDE = (
    "lib/python*/site-packages/__editable__.songrec-*",
    "lib/python*/site-packages/__editable___songrec_*",
    "lib/python*/site-packages/songrec-*.dist-info/*",
    "bin/songrec",
    "lib/python*/site-packages/pyspark/jars/*",
)


def editable_locations(prefix: Path) -> list[str]:
    """Locations named by the venv's ``.pth`` files that lie outside it (editable installs), like venv-pack."""
    found = []
    for pth in sorted(prefix.glob("lib/python*/site-packages/*.pth")):
        for line in pth.read_text(encoding="utf-8").splitlines():
            line = line.rstrip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            location = os.path.normpath(os.path.join(pth.parent, line))
            if not location.startswith(str(prefix)):
                found.append(location)
    return found


def pack(prefix: Path, output: Path, own_code: Path = ROOT / "lib", compress_level: int = 4) -> Path:
    """Write ``prefix`` (a venv) to the archive ``output``, without our own editable install.

    Args:
        prefix: the virtual environment.
        output: ``.tar.gz`` (or ``.zip``) to write; replaced atomically (venv-pack writes a temp file, then moves it).
        own_code: the folder the editable songrec install points at; the only editable location allowed.
        compress_level: gzip level (venv-pack's default 4; the archive is read once per executor).

    Returns:
        ``output``.

    Raises:
        venv_pack.VenvPackException: another editable package, or not a venv.
    """
    import venv_pack
    from venv_pack import core

    prefix = Path(prefix).resolve()
    others = [loc for loc in editable_locations(prefix) if Path(loc).resolve() != Path(own_code).resolve()]
    if others:
        raise venv_pack.VenvPackException(
            f"cannot pack editable packages other than songrec (executors would miss them): {', '.join(others)}"
        )
    # venv-pack checks for editable installs before it applies any exclusion, so its check is
    # replaced by ours above (same rule, songrec allowed) for the time of loading the file list.
    original = core.check_no_editable_packages
    core.check_no_editable_packages = lambda context: None
    try:
        env = venv_pack.Env(str(prefix))
    finally:
        core.check_no_editable_packages = original
    for pattern in EXCLUDE:
        env = env.exclude(pattern)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env.pack(output=str(output), force=True, compress_level=compress_level)
    output.chmod(0o644)  # venv-pack's temp file is 0600; the archive is no secret and others may submit it
    log.info(
        "packed %s (%d files) into %s: %.0f MB in %.0f s",
        prefix, len(env), output, output.stat().st_size / 1e6, time.perf_counter() - started,
    )  # fmt: skip
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default=sys.prefix, help="virtual environment to pack (default: this one)")
    parser.add_argument("--output", default=str(ROOT / "build" / "env.tar.gz"))
    parser.add_argument("--compress-level", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%X")
    import venv_pack

    try:
        pack(Path(args.prefix), Path(args.output), compress_level=args.compress_level)
    except venv_pack.VenvPackException as exc:
        log.error("pack failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
