"""The pipeline job: stages in one application, skipped when unchanged, re-run when an input changes."""

import json

from conftest import copy_run

from songrec.config import local_path
from songrec.pipeline import STAGE_NAMES, fingerprint, run_pipeline, select


def test_select_stages():
    assert [s.name for s in select(None, None)] == STAGE_NAMES
    assert [s.name for s in select("knn", "evaluate")] == ["knn", "evaluate"]


def test_unchanged_stages_are_skipped_and_changed_config_reruns_downstream(spark, finished, tmp_path, caplog):
    cfg = copy_run(finished, tmp_path)
    caplog.set_level("INFO")
    timings = run_pipeline(spark, cfg, start="embed")
    assert {s: timings[s]["status"] for s in ["embed", "knn", "evaluate", "report"]} == {
        s: "skipped (unchanged)" for s in ["embed", "knn", "evaluate", "report"]
    }
    assert "stage knn: inputs and config unchanged since its last successful run, skipped" in caplog.text

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
    before = fingerprint(cfg, knn)
    emb = local_path(cfg.path("embeddings"))
    target = emb.resolve()
    moved = target.with_name(target.name.rsplit(".v", 1)[0] + ".v1")
    target.rename(moved)
    emb.unlink()
    emb.symlink_to(moved.name)
    assert fingerprint(cfg, knn) != before
