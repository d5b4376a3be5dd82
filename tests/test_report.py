"""Reports: Markdown and self-contained HTML, for a study and for a tour."""

from __future__ import annotations

import re

import pytest

from experiments import mnar_ratings
from experiments.cli import main
from experiments.report import build
from sim.config import ConfigError

TINY = {
    "world.n_users": "40", "world.n_items": "30", "world.dim": "2",
    "selection.density": "0.1", "train.dim": "2", "train.l2_grid": "[0.001]",
    "train.max_epochs": "2", "train.batch_size": "64",
    "propensity.logistic_steps": "5",
}


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    # The tour's machinery is the same for every experiment; the test tours
    # one, tiny (each experiment runs end to end in its own test file).
    from experiments import registry

    patch = pytest.MonkeyPatch()
    patch.setattr(registry, "EXPERIMENTS", {"mnar-ratings": "experiments.mnar_ratings"})
    patch.setattr(mnar_ratings, "TEACHING", TINY)
    patch.setattr(mnar_ratings, "TEACHING_SEEDS", 2)
    try:
        assert main(["tour", "--out", str(out), "--no-progress"]) == 0
    finally:
        patch.undo()
    return out


def test_tour_writes_one_self_contained_report(tour):
    html = (tour / "report.html").read_text()
    images = re.findall(r'<img[^>]*src="([^"]+)"', html)
    figures = list(tour.glob("*/figures/*.png"))
    assert len(images) == len(figures) >= 3
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in html and "https://" not in html
    assert "<table>" in html
    text = (tour / "report.md").read_text()
    assert "## mnar-ratings" in text and "(mnar-ratings/figures/" in text


def test_report_command_rebuilds_a_single_study(tour, capsys):
    study = tour / "mnar-ratings"
    (study / "report.html").unlink(missing_ok=True)
    assert main(["report", str(study)]) == 0
    html = (study / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list(study.glob("figures/*.png")))
    assert "Naive looks good where it was trained" in html


def test_report_of_a_folder_without_studies_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="report folder must hold a study"):
        build(tmp_path)


def _chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine "
                    "(.ci/run installs Debian's chromium)")
def test_html_report_opens_in_headless_chromium(tour, tmp_path):
    import subprocess

    html = (tour / "report.html").read_text()
    # A probe run after load: counts images the browser failed to decode.
    probe = ("<script>window.addEventListener('load', () => { document.body.dataset."
             "broken = [...document.images].filter(i => !(i.complete && "
             "i.naturalWidth > 0)).length; document.body.dataset.images = "
             "document.images.length; });</script>")
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    out = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    n_images = html.count("<img")
    assert f'data-images="{n_images}"' in dom and 'data-broken="0"' in dom
    assert "Naive looks good where it was trained" in dom


def test_paired_t_matches_a_hand_computation():
    import pandas as pd

    from experiments.report import paired_t

    rows = pd.DataFrame({
        "seed": [0, 1, 2, 0, 1, 2, 0],
        "method": ["a", "a", "a", "b", "b", "b", "a"],
        "metric": ["m"] * 6 + ["other"],
        "value": [3.0, 5.0, 4.0, 1.0, 2.0, 4.0, 99.0],
    })
    # differences 2, 3, 0: mean 5/3, sd sqrt(7/3), t = mean / (sd / sqrt(3))
    t, n = paired_t(rows, "m", {"method": "a"}, {"method": "b"})
    assert n == 3 and t == pytest.approx((5 / 3) / ((7 / 3) ** 0.5 / 3 ** 0.5))
    same = rows.assign(value=[1.0, 2.0, 4.0, 1.0, 2.0, 4.0, 0.0])
    assert paired_t(same, "m", {"method": "a"}, {"method": "b"}) == (None, 3)
