"""Reading and writing at the edges: staging, atomic commit of tables, small JSON files.

Every table is written to ``root/_staging/<name>-<uuid>`` and only then committed in one step, so
that a failed or killed run never leaves a half-written table where a consumer reads.

On a local filesystem the table path (``root/neighbors``) is a symbolic link to a versioned
directory (``root/.neighbors.v<ns>``); commit replaces the link with ``os.replace``, which POSIX
makes atomic, so a reader sees the old table or the new one and never a mixture. Superseded versions are
kept for ``KEEP_SECONDS`` after the commit that replaced them (and the previous one always), so a reader
that resolved the link just before one or more commits still finds every file it listed; older
ones are deleted by a later commit. On HDFS / S3 the table
is swapped by two renames through Hadoop's FileSystem API (a brief window where the path is absent,
never a partial table).
"""

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from songrec.config import local_path
from songrec.errors import first_line

log = logging.getLogger(__name__)

KEEP_VERSIONS = 2  # the committed version and the one before it, however old
# A version replaced less than this long ago is kept too: a reader that resolved the link before
# two quick commits (re-runs, the pipeline) may still be opening the files it listed.
KEEP_SECONDS = 600


def is_local(uri: str) -> bool:
    """True for ``file://`` URIs and plain paths."""
    return uri.startswith("file://") or "://" not in uri


def staging_uri(root_uri: str, name: str) -> str:
    """A fresh staging location for table ``name`` under the run root."""
    return f"{root_uri.rstrip('/')}/_staging/{name}-{uuid.uuid4().hex[:12]}"


def hadoop_fs(spark: Any, uri: str) -> tuple[Any, Any]:
    """``(FileSystem, Path)`` of ``uri`` through the session's Hadoop configuration."""
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark._jsc.hadoopConfiguration()), path


def exists(uri: str, spark: Any = None) -> bool:
    """Whether a file or table exists at ``uri``."""
    if is_local(uri):
        return local_path(uri).exists()
    fs, path = hadoop_fs(spark, uri)
    return bool(fs.exists(path))


def commit(staging: str, final: str, spark: Any = None) -> None:
    """Move the complete table at ``staging`` to ``final`` atomically (see module docstring)."""
    if is_local(final):
        _commit_local(local_path(staging), _link_path(final))
    else:
        _commit_hadoop(spark, staging, final)
    log.info("committed %s", final)


def _link_path(uri: str) -> Path:
    """The local path of a table's link itself: ``local_path`` resolves a plain path's symlinks, which
    would commit into the version folder the link points at instead of swapping the link."""
    if uri.startswith("file://"):
        return local_path(uri)
    path = Path(uri).expanduser()
    return local_path(str(path.parent)) / path.name


def _commit_local(staging: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    version = final.parent / f".{final.name}.v{time.time_ns()}"
    os.replace(staging, version)
    if final.exists() and not final.is_symlink():
        # A plain directory from elsewhere (first commit over a hand-made copy): move it aside first.
        os.replace(final, final.parent / f".{final.name}.v0")
    link = final.parent / f".{final.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(version.name, link)
    os.replace(link, final)
    versions = sorted(final.parent.glob(f".{final.name}.v*"), key=_version_ns)
    now = time.time_ns()
    for old, successor in zip(versions[:-KEEP_VERSIONS], versions[1:], strict=False):
        if now - _version_ns(successor) > KEEP_SECONDS * 1_000_000_000:  # replaced long enough ago
            shutil.rmtree(old, ignore_errors=True)


def _version_ns(path: Path) -> int:
    """The commit time in the name of a version folder ``.name.v<ns>``."""
    return int(path.name.rsplit(".v", 1)[1])


def _commit_hadoop(spark: Any, staging: str, final: str) -> None:
    fs, final_path = hadoop_fs(spark, final)
    _, staging_path = hadoop_fs(spark, staging)
    jvm = spark._jvm
    fs.mkdirs(final_path.getParent())
    old = None
    if fs.exists(final_path):
        old = jvm.org.apache.hadoop.fs.Path(f"{final}.old-{time.time_ns()}")
        if not fs.rename(final_path, old):
            raise OSError(f"could not move {final} aside to commit the new table")
    if not fs.rename(staging_path, final_path):
        if old is not None:
            fs.rename(old, final_path)
        raise OSError(f"could not rename {staging} to {final}")
    if old is not None:
        fs.delete(old, True)


def upload(folder: str | Path, uri: str, spark: Any = None) -> None:
    """Copy a local folder (artefacts made on the driver) to ``uri``, a staging location on any filesystem."""
    if is_local(uri):
        shutil.copytree(folder, local_path(uri))
    else:
        _upload_hadoop(spark, Path(folder), uri)


def _upload_hadoop(spark: Any, folder: Path, uri: str) -> None:
    """Hadoop's ``copyFromLocalFile``: the folder becomes ``uri`` (HDFS, S3 or any filesystem Hadoop knows)."""
    fs, dst = hadoop_fs(spark, uri)
    fs.copyFromLocalFile(False, True, spark._jvm.org.apache.hadoop.fs.Path(folder.resolve().as_uri()), dst)


def download(uri: str, dest: str | Path, spark: Any) -> None:
    """Copy one file at ``uri`` (HDFS, S3 or any filesystem Hadoop knows) to the local path ``dest``: :func:`upload`'s
    twin, for inputs that pyarrow cannot open by scheme."""
    fs, src = hadoop_fs(spark, uri)
    fs.copyToLocalFile(False, src, spark._jvm.org.apache.hadoop.fs.Path(Path(dest).resolve().as_uri()), True)


def discard(staging: str, spark: Any = None) -> None:
    """Remove a staging location after a failure (best effort)."""
    try:
        if is_local(staging):
            shutil.rmtree(local_path(staging), ignore_errors=True)
        else:
            fs, path = hadoop_fs(spark, staging)
            fs.delete(path, True)
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the original error
        log.warning("could not remove staging %s: %s", staging, exc)


def write_json(uri: str, obj: Any, spark: Any = None) -> None:
    """Write ``obj`` as pretty JSON, atomically: a temp file, then a rename (off a local disk: _replace_hadoop)."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str)
    if is_local(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    fs, path = hadoop_fs(spark, uri)
    tmp = spark._jvm.org.apache.hadoop.fs.Path(f"{uri.rsplit('/', 1)[0]}/.{path.getName()}.tmp-{uuid.uuid4().hex[:8]}")
    out = fs.create(tmp, True)
    try:
        out.write(bytearray(text.encode()))
    finally:
        out.close()
    _replace_hadoop(spark, fs, tmp, path)


def _replace_hadoop(spark: Any, fs: Any, src: Any, dst: Any) -> None:
    """Rename ``src`` over ``dst``: one atomic rename where the filesystem has one (HDFS: FileContext's
    OVERWRITE), else delete then rename (a moment where ``dst`` is absent, never one where it is partial)."""
    jvm = spark._jvm
    try:
        context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(dst.toUri(), spark._jsc.hadoopConfiguration())
    except Exception as exc:  # noqa: BLE001 - Py4JJavaError: no AbstractFileSystem for this scheme
        log.debug("no FileContext for %s (%s): delete then rename", dst, first_line(str(exc)))
        fs.delete(dst, False)
        if not fs.rename(src, dst):
            raise OSError(f"could not rename {src} to {dst}") from None
        return
    options = spark.sparkContext._gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
    options[0] = jvm.org.apache.hadoop.fs.Options.Rename.OVERWRITE
    context.rename(src, dst, options)


def read_json(uri: str, spark: Any = None) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    if is_local(uri):
        return json.loads(local_path(uri).read_text())
    fs, path = hadoop_fs(spark, uri)
    stream = fs.open(path)
    try:
        reader = spark._jvm.java.io.BufferedReader(spark._jvm.java.io.InputStreamReader(stream, "UTF-8"))
        lines = []
        while (line := reader.readLine()) is not None:
            lines.append(line)
        return json.loads("\n".join(lines))
    finally:
        stream.close()
