"""report/index.html renders in headless Chromium: every image loads, headline numbers equal metrics.json."""

import json
import re
import shutil
import subprocess

import pytest

from songrec.config import local_path
from songrec.report import HEADLINES, _flatten, fmt

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the page: after load, record each image's decoded width in the DOM.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  document.body.setAttribute('data-images', JSON.stringify(imgs.map(i => [i.alt, i.complete, i.naturalWidth])));
});
</script>"""


@pytest.fixture(scope="module")
def report_dir(finished):
    return local_path(finished.path("report"))


def test_report_files_and_metrics(report_dir):
    metrics = json.loads((report_dir / "metrics.json").read_text())
    model = json.loads((report_dir.parent / "model" / "model.json").read_text())
    assert {"recall", "relevance", "stages", "counts"} <= set(metrics)
    assert set(metrics["stages"]) >= {"embed", "knn", "evaluate"}
    assert metrics["counts"]["read"] == sum(metrics["counts"][k] for k in ("clean", "duplicates", "rejected"))
    html = (report_dir / "index.html").read_text()
    assert "src='data:image/png;base64," in html and "http://" not in html and "https://" not in html
    for name, value in [
        ("model.model_id", model["model_id"]),
        ("model.latent_dim", model["model"]["latent_dim"]),
        ("train.world_size", 2),
        ("train.precision", model["summary"]["precision"]),
    ]:  # the parameter table
        assert f"<td>{name}</td><td>{value}</td>" in html


def test_page_in_headless_chromium(report_dir, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed and could not be installed here (make test tries apt-get)")
    page = tmp_path / "index.html"
    page.write_text((report_dir / "index.html").read_text().replace("</body>", PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    found = re.search(r'data-images="([^"]*)"', dom)
    assert found, "the page did not finish loading in Chromium"
    images = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(images) >= 3
    assert all(complete and width > 0 for _, complete, width in images), images
    metrics = json.loads((report_dir / "metrics.json").read_text())
    flat = _flatten(metrics)
    shown = dict(re.findall(r'data-metric="([^"]+)">([^<]*)<', dom))
    for _, key in HEADLINES:
        assert shown.get(key) == fmt(flat[key]), f"{key}: page shows {shown.get(key)!r}, metrics.json has {flat[key]!r}"
