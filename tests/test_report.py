"""The HTML report: self-contained, best values marked, and every image loads in a browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from icg.evaluation.report import metrics_table, write_report


def _report(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    cover = lambda: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)  # noqa: E731
    grid = [
        {
            "label": f"user {u} (segment {u})",
            "title": "The crimson orb",
            "covers": {m: cover() for m in ("reference", "icg", "oracle")},
        }
        for u in range(3)
    ]
    metrics = {
        "methods": {
            "reference": {"true_ctr": 0.2, "seconds": 0.0},
            "icg": {"true_ctr": 0.3, "seconds": 5.0},
            "oracle": {"true_ctr": 0.6, "seconds": 1.0},
        }
    }
    curves = {
        "icg": [{"step": s, "reward": s / 10, "probe_true_ctr": 0.2 + s / 100} for s in range(5)]
    }
    return write_report(
        tmp_path / "report.html",
        metrics=metrics,
        grid=grid,
        curves=curves,
        configs={"world": {"seed": 3}},
    )


def test_report_is_self_contained(tmp_path: Path):
    html = _report(tmp_path).read_text()
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) == 3 * 3 + 1  # the grid and the curves figure
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not list(tmp_path.glob(".report.html-*"))  # atomic write left no temp file


def test_best_value_marked_excluding_oracle():
    table = metrics_table(
        {
            "a": {"true_ctr": 0.2, "seconds": 3.0},
            "b": {"true_ctr": 0.3, "seconds": 1.0},
            "oracle": {"true_ctr": 0.9, "seconds": 9.0},
        }
    )
    assert '<td class="best">0.3000</td>' in table  # highest CTR among non-oracle methods
    assert '<td class="best">1.0000</td>' in table  # fewest seconds


def _browser() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


@pytest.mark.skipif(
    _browser() is None,
    reason="no headless Chromium found (Debian package 'chromium'; .ci/run installs it)",
)
def test_every_image_loads_in_headless_chromium(tmp_path: Path):
    path = _report(tmp_path)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [_browser(), *flags, "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-images-loaded="10/10"' in dom, dom[-500:]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_browser(), *flags, f"--screenshot={shot}", "--window-size=1200,900", path.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 1000


def test_personal_gain_line_in_the_report(tmp_path: Path):
    from icg.evaluation.report import personal_gain_line

    assert personal_gain_line(None) == ""
    gain = {"mean": 0.0412, "ci_low": 0.0101, "ci_high": 0.0723, "n": 84}
    line = personal_gain_line(gain)
    assert "+0.0412" in line and "[+0.0101, +0.0723]" in line and "84 pairs" in line
    metrics = {
        "methods": {"variant-select": {"true_taste_match": 0.7}, "icg": {"true_taste_match": 0.8}},
        "personal_gain": gain,
    }
    path = write_report(tmp_path / "r.html", metrics=metrics, grid=[], curves={}, configs={})
    html = path.read_text()
    assert line in html and "variant-select" in html and "true_taste_match" in html
