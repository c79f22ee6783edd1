"""Atomic commit: readers see the old table or the new one, never a partial one."""

import os
from pathlib import Path

from songrec import io


def _table(path, marker: str) -> None:
    path.mkdir(parents=True)
    (path / "part-0.txt").write_text(marker)


def test_commit_replaces_and_keeps_previous_version(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "KEEP_SECONDS", 0)  # no grace period: only KEEP_VERSIONS remain
    final = tmp_path / "run" / "neighbors"
    for marker in ["v1", "v2", "v3"]:
        staging = tmp_path / "run" / "_staging" / marker
        _table(staging, marker)
        io.commit(staging.as_uri(), final.as_uri())
        assert (final / "part-0.txt").read_text() == marker
        assert not staging.exists()
    versions = sorted(p.name for p in final.parent.glob(".neighbors.v*"))
    assert len(versions) == io.KEEP_VERSIONS  # older versions are cleaned up
    assert final.is_symlink()


def test_commit_keeps_recently_replaced_versions(tmp_path):
    final = tmp_path / "run" / "neighbors"
    for marker in ["v1", "v2", "v3"]:
        staging = tmp_path / "run" / "_staging" / marker
        _table(staging, marker)
        io.commit(staging.as_uri(), final.as_uri())
    versions = sorted(final.parent.glob(".neighbors.v*"), key=lambda p: int(p.name.rsplit(".v", 1)[1]))
    assert [(p / "part-0.txt").read_text() for p in versions] == ["v1", "v2", "v3"]  # v1 replaced seconds ago


def test_commit_over_plain_directory(tmp_path):
    final = tmp_path / "songs"
    _table(final, "handmade")
    staging = tmp_path / "_staging" / "x"
    _table(staging, "new")
    io.commit(str(staging), str(final))
    assert (final / "part-0.txt").read_text() == "new"


def test_reader_holding_old_version_keeps_reading(tmp_path):
    final = tmp_path / "t"
    _table(tmp_path / "s1", "old")
    io.commit(str(tmp_path / "s1"), str(final))
    listed = os.path.realpath(final)  # a consumer resolved the table and listed its files, opens them later
    _table(tmp_path / "s2", "new")
    io.commit(str(tmp_path / "s2"), str(final))
    # An open file would stay readable anyway on POSIX; a file opened after the commit needs its version kept.
    assert (Path(listed) / "part-0.txt").read_text() == "old"
    assert (final / "part-0.txt").read_text() == "new"
    # A plain path names the link, not the version it points at: the link was swapped, no version nested.
    assert final.is_symlink() and not list(tmp_path.glob("..t.v*"))


def test_json_round_trip_is_atomic(tmp_path):
    target = tmp_path / "meta" / "counts.json"
    io.write_json(str(target), {"read": 3})
    assert io.read_json(target.as_uri()) == {"read": 3}
    assert [p.name for p in target.parent.iterdir()] == ["counts.json"]  # no temp file left behind
    assert io.exists(str(target)) and not io.exists(str(tmp_path / "nope"))


def test_discard_removes_staging(tmp_path):
    staging = tmp_path / "_staging" / "x"
    _table(staging, "partial")
    io.discard(staging.as_uri())
    assert not staging.exists()
    assert os.listdir(tmp_path / "_staging") == []


def test_upload_and_download_copy_through_hadoop(spark, tmp_path):
    """io.upload: a plain copy under a local root; Hadoop's copyFromLocalFile otherwise (the path the train and
    report stages take to an HDFS or S3 root), run here against Hadoop's own local filesystem."""
    src = tmp_path / "artefacts"
    (src / "sub").mkdir(parents=True)
    (src / "index.html").write_text("<p>é</p>", encoding="utf-8")
    (src / "sub" / "loss.png").write_bytes(bytes(range(256)))
    io.upload(src, str(tmp_path / "local-copy"))
    io._upload_hadoop(spark, src, (tmp_path / "hadoop-copy").as_uri())
    for copy in ("local-copy", "hadoop-copy"):
        assert (tmp_path / copy / "index.html").read_text(encoding="utf-8") == "<p>é</p>"
        assert (tmp_path / copy / "sub" / "loss.png").read_bytes() == bytes(range(256))

    io.download((tmp_path / "hadoop-copy" / "sub" / "loss.png").as_uri(), tmp_path / "fetched.png", spark)  # the twin
    assert (tmp_path / "fetched.png").read_bytes() == bytes(range(256))


def test_json_through_hadoop_replaces_the_file_whole(spark, tmp_path):
    """Off a local disk write_json writes a temp file and renames it over the old one (HDFS, S3; here a viewfs://
    mount of a local folder, so Hadoop's code path runs): never a half-written file, no temp file left."""
    import uuid

    mount = f"io{uuid.uuid4().hex[:8]}"
    spark._jsc.hadoopConfiguration().set(f"fs.viewfs.mounttable.{mount}.link./lake", tmp_path.as_uri())
    uri = f"viewfs://{mount}/lake/_state/knn.json"
    for n in (1, 2):
        io.write_json(uri, {"fingerprint": "x" * n}, spark)
        assert io.read_json(uri, spark) == {"fingerprint": "x" * n}
    assert sorted(p.name for p in (tmp_path / "_state").iterdir() if not p.name.endswith(".crc")) == ["knn.json"]


def test_an_unreadable_state_file_means_the_stage_runs(tmp_path):
    """A state file cut short (a kill while it was written on a filesystem without atomic rename) is not an error."""
    from songrec.pipeline import _read_state

    state = tmp_path / "knn.json"
    state.write_text('{"fingerprint": "ab')
    assert _read_state(str(state), None) == {} and _read_state(str(tmp_path / "absent.json"), None) == {}
