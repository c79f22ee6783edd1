"""The pipeline job: stages in one application, skipped when unchanged, re-run when an input changes."""

import json
import os
import shutil
import uuid

import pandas as pd
import pytest
from conftest import ROOT, copy_run

from songrec import io
from songrec.config import ConfigError, load_config, local_path
from songrec.pipeline import STAGE_NAMES, fingerprint, read_versions, run_pipeline, select


def test_select_stages():
    assert [s.name for s in select(None, None)] == STAGE_NAMES
    assert [s.name for s in select("knn", "evaluate")] == ["knn", "evaluate"]
    with pytest.raises(ConfigError, match="--from report comes after --to knn"):  # a clear line, exit 2
        select("report", "knn")


def test_unchanged_stages_are_skipped_and_changed_config_reruns_downstream(spark, finished, tmp_path, caplog):
    cfg = copy_run(finished, tmp_path)
    caplog.set_level("INFO")
    timings = run_pipeline(spark, cfg, start="embed")
    assert {s: timings[s]["status"] for s in ["embed", "knn", "evaluate", "report"]} == {
        s: "skipped (unchanged)" for s in ["embed", "knn", "evaluate", "report"]
    }
    assert "stage knn: inputs and config unchanged since its last successful run, skipped" in caplog.text
    report = local_path(cfg.path("report"))
    before = os.readlink(report)
    assert run_pipeline(spark, cfg, start="report", force=True)["report"]["status"] == "ran"  # --force
    assert os.readlink(report) != before  # a new version committed

    changed = copy_run(finished, tmp_path / "k5", "knn.k=5")
    timings = run_pipeline(spark, changed, start="embed")
    assert timings["embed"]["status"].startswith("skipped")
    assert [timings[s]["status"] for s in ["knn", "evaluate", "report"]] == ["ran", "ran", "ran"]
    manifest = json.loads((local_path(changed.path("neighbors")) / "_manifest.json").read_text())
    assert manifest["k"] == 5


def test_fingerprint_follows_table_versions(finished, tmp_path):
    from songrec.pipeline import STAGES

    cfg = copy_run(finished, tmp_path)
    knn = next(s for s in STAGES if s.name == "knn")
    before = fingerprint(cfg, knn, read_versions(cfg, knn.reads))
    emb = local_path(cfg.path("embeddings"))
    target = emb.resolve()
    moved = target.with_name(target.name.rsplit(".v", 1)[0] + ".v1")
    target.rename(moved)
    emb.unlink()
    emb.symlink_to(moved.name)
    assert fingerprint(cfg, knn, read_versions(cfg, knn.reads)) != before


def test_a_run_root_on_a_hadoop_filesystem(spark, finished, tmp_path):
    """A run root that is not a local path (HDFS, S3 on a cluster) goes through Hadoop's FileSystem API: commits
    by rename, JSON through streams, the report copied up from the driver. Here the root is a viewfs:// mount
    of a local folder, so every stage from preprocess to report takes that code path for real, and its tables
    must equal the local run's (training is not run: Petastorm reads only local, HDFS and S3 URIs; the local
    run's model is copied in)."""
    lake = tmp_path / "lake"
    lake.mkdir()
    mount = f"lake{uuid.uuid4().hex[:8]}"  # Hadoop caches a filesystem per authority: a fresh one per test
    spark._jsc.hadoopConfiguration().set(f"fs.viewfs.mounttable.{mount}.link./runs", lake.as_uri())
    from songrec.generate import truth_uri

    shutil.copy(local_path(truth_uri(finished)), lake / "truth.csv")  # the generator's truth file, read remotely
    remote = load_config(
        ROOT / "conf" / "test.yaml",
        [
            f"input={finished.input}",
            f"root=viewfs://{mount}/runs/r1",
            f"evaluate.truth=viewfs://{mount}/runs/truth.csv",
        ],
    )
    assert not io.is_local(remote.path())
    timings = run_pipeline(spark, remote, stop="preprocess")
    assert timings["preprocess"]["status"] == "ran"
    shutil.copytree(local_path(finished.path("model")), lake / "r1" / "model")
    timings = run_pipeline(spark, remote, start="embed")
    assert [timings[s]["status"] for s in ("embed", "knn", "evaluate", "report")] == ["ran"] * 4

    def table(cfg, name):
        df = spark.read.parquet(cfg.path(name)).toPandas()
        return df.sort_values([c for c in ("song_id", "rank") if c in df.columns]).reset_index(drop=True)

    for name in ("songs", "neighbors"):
        pd.testing.assert_frame_equal(table(remote, name).drop(columns="bucket", errors="ignore"),
                                      table(finished, name).drop(columns="bucket", errors="ignore"))  # fmt: skip
    got = io.read_json(remote.path("report", "metrics.json"), spark)
    want = json.loads((local_path(finished.path("report")) / "metrics.json").read_text())
    assert got["recall"] == want["recall"] and got["relevance"] == want["relevance"]
    assert got["relevance"]["embedding"]["planted_precision_at_10"] is not None
    assert (lake / "r1" / "report" / "index.html").stat().st_size > 10_000
    assert not list((lake / "r1" / "_staging").iterdir())  # every staging folder committed or removed
    timings = run_pipeline(spark, remote, start="embed")  # table versions read through Hadoop: all unchanged
    assert {timings[s]["status"] for s in ("embed", "knn", "evaluate", "report")} == {"skipped (unchanged)"}


def test_a_linked_input_file_has_a_version(tmp_path):
    """The raw input may be a symbolic link to a downloaded file: its version is the file's, and follows it."""
    from songrec.pipeline import table_version

    data = tmp_path / "downloads" / "spotify_dataset.csv"
    data.parent.mkdir()
    data.write_text("a,b\n1,2\n")
    link = tmp_path / "raw" / "spotify_dataset.csv"
    link.parent.mkdir()
    link.symlink_to(data)
    # As a file:// URI the path is taken as it is (a plain path is resolved, link and all, by the config).
    cfg = load_config(ROOT / "conf" / "test.yaml", [f"input=file://{link}", f"root={tmp_path / 'run'}"])
    before = table_version(cfg, "input")
    data.write_text("a,b\n1,2\n3,4\n")
    assert before.startswith("spotify_dataset.csv:8:") and table_version(cfg, "input") != before


def test_an_input_replaced_while_a_stage_runs_makes_the_next_run_repeat_it(spark, finished, tmp_path, monkeypatch):
    """The state records what the stage read when it started: embeddings/ committed anew by another job while knn
    runs were not what knn read, so the next pipeline run must not skip knn."""
    import songrec.pipeline as pipeline

    cfg = copy_run(finished, tmp_path)
    real = pipeline._runner

    def runner(name):
        def run(spark, cfg):
            result = real(name)(spark, cfg)
            emb = local_path(cfg.path("embeddings"))
            staging = emb.parent / "_staging" / "embeddings-meanwhile"
            shutil.copytree(emb.resolve(), staging)
            io.commit(str(staging), str(emb))  # another job's commit, landing before the stage ends
            return result

        return run if name == "knn" else real(name)

    monkeypatch.setattr(pipeline, "_runner", runner)
    assert run_pipeline(spark, cfg, start="knn", stop="knn", force=True)["knn"]["status"] == "ran"
    monkeypatch.setattr(pipeline, "_runner", real)
    assert run_pipeline(spark, cfg, start="knn", stop="knn")["knn"]["status"] == "ran"
    assert run_pipeline(spark, cfg, start="knn", stop="knn")["knn"]["status"] == "skipped (unchanged)"
