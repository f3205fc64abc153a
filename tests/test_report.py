"""The HTML report: it opens with its verdict and a chart with intervals, it is self-contained,
best values are marked, and in a 1280 px browser every image loads and nothing scrolls sideways."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from icg.evaluation.methods import ICG_METHODS, METHODS
from icg.evaluation.report import (
    BEST_OF_K,
    headline_chart,
    metrics_table,
    verdict,
    write_report,
)
from icg.evaluation.report_chart import ChartRow, interval_chart, nice_step

# every column of a real evaluation on CoverWorld: the widest table the report has to fit
COLUMNS = (
    "n_pairs", "seconds", "fidelity_motif", "fidelity_palette", "true_aesthetic",
    "true_relevance", "true_taste_match", "true_ctr", "true_ctr_coldstart", "diversity",
    "clipscore", "rec_auc", "rec_ndcg10", "aesthetic_reward", "preference_score",
    "lift_fraction",
)  # fmt: skip
CTR = {"reference": 0.268, "variant-select": 0.358, "icg-single": 0.293, "icg": 0.338}


def _metrics(truth: bool = True) -> dict:
    """Metrics of every method, shaped as `evaluate_methods` writes them (96 pairs)."""
    rng = np.random.default_rng(0)
    methods, intervals = {}, {}
    for k, name in enumerate(METHODS):
        m = {c: float(rng.uniform(0.2, 0.9)) for c in COLUMNS}
        m["n_pairs"], m["true_ctr"] = 96, CTR.get(name, 0.2 + 0.001 * k)
        if name == "oracle":
            m["true_ctr"] = 0.634
        if not truth:
            m = {c: v for c, v in m.items() if not c.startswith(("true_", "fidelity_", "lift"))}
        methods[name] = m
        metric = "true_ctr" if truth else "preference_score"
        mean = m[metric]
        intervals[name] = {metric: {"mean": mean, "ci_low": mean - 0.04, "ci_high": mean + 0.04}}
    return {"world": {}, "methods": methods, "intervals": intervals}


def _report(tmp_path: Path, **kwargs) -> Path:
    rng = np.random.default_rng(0)
    cover = lambda: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)  # noqa: E731
    grid = [
        {
            "label": f"u0000{u} (cold start) / i0001{u}",
            "title": "The crimson orb",
            "covers": {m: cover() for m in METHODS},
        }
        for u in range(3)
    ]
    curves = {
        "icg": [{"step": s, "reward": s / 10, "probe_true_ctr": 0.2 + s / 100} for s in range(5)]
    }
    return write_report(
        tmp_path / "report.html",
        metrics=_metrics(),
        grid=grid,
        curves=curves,
        configs={"world": {"seed": 3}, "evaluation": {"candidates": 8}},
        **kwargs,
    )


def test_report_is_self_contained(tmp_path: Path):
    html = _report(tmp_path).read_text()
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert len(srcs) == 3 * len(METHODS) + 1  # the grid and the curves figure
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    assert not list(tmp_path.glob(".report.html-*"))  # atomic write left no temp file


def test_report_opens_with_the_verdict_then_the_chart(tmp_path: Path):
    html = _report(tmp_path).read_text()
    start = html.index("<h1>")
    assert start < html.index("class='verdict'") < html.index("<svg") < html.index("<h2>Metrics")
    text = re.sub(r"<[^>]+>", "", html[html.index("class='verdict'") : html.index("<svg")])
    assert (
        "variant-select (the platform's covers, picked per user) has the highest true CTR" in text
    )
    assert "over 96 (user, item) pairs: 0.358 [0.318, 0.398]" in text
    assert "ICG (best of 8) 0.338 [0.298, 0.378]" in text
    assert "ICG's one draw 0.293 [0.253, 0.333]" in text
    assert "ICG's one draw 0.293 [0.253, 0.333] and the platform's reference covers 0.268" in text
    assert "the oracle (the truth's best cover) reaches 0.634, 0.276 of headroom" in text


def test_verdict_names_icg_when_it_wins_and_says_when_there_is_no_truth():
    metrics = _metrics()
    metrics["methods"]["icg"]["true_ctr"] = 0.41
    assert "<b>ICG (best of 8) has the highest true CTR" in verdict(metrics, candidates=8)
    real = verdict(_metrics(truth=False), candidates=8)  # platform data: no truth/
    assert "true CTR is not available" in real and "<code>preference_score</code>" in real
    assert "oracle" not in real
    assert "No metric" in verdict({"methods": {"a": {"seconds": 1.0}}})


def test_chart_draws_every_method_with_its_interval_and_the_oracle_line():
    html = headline_chart(_metrics(), 8)
    svg = html[html.index("<svg") : html.index("</svg>")]
    names = [n for n in METHODS if n != "oracle"]
    dots = re.findall(r'<circle cx="[\d.]+" cy="[\d.]+" r="4.5"', svg)
    assert len(dots) == len(names) + 4  # one per method, and the legend's four roles
    for name in names:
        assert f">{name}</text>" in svg
    assert "oracle 0.634" in svg and 'stroke-dasharray="4 3"' in svg
    assert svg.count('stroke-width="1.5"/>') >= 3 * len(names)  # whisker and two caps each
    assert "icg-single" in svg and "1.96" in html  # the caption says how the intervals are made
    # without intervals the chart still draws the means, and the caption says so
    bare = {"methods": {"a": {"true_ctr": 0.2}, "oracle": {"true_ctr": 0.5}}}
    assert "no intervals" in headline_chart(bare, None)


def test_interval_chart_axis_and_rows():
    assert [nice_step(s) for s in (0.63, 1.0, 12.0, 0.0)] == [0.1, 0.2, 2.0, 1.0]
    svg = interval_chart(
        [ChartRow("a", 0.25, 0.2, 0.3, "platform"), ChartRow("b", 0.5)], metric="true_ctr"
    )
    assert svg.startswith("<svg") and "0.250 [0.200, 0.300]" in svg and ">0.500<" in svg
    assert interval_chart([], metric="x") == ""


def test_best_of_k_methods_match_the_method_table():
    assert set(BEST_OF_K) == {m for m, spec in ICG_METHODS.items() if spec.best_of_k}


def test_smoke_test_banner_comes_first(tmp_path: Path):
    html = _report(tmp_path, banner="Smoke test <quick> budget: `make demo`").read_text()
    banner = html.index(
        "<div class='banner'>Smoke test &lt;quick&gt; budget: <code>make demo</code></div>"
    )
    assert html.index("<h1>") < banner < html.index("class='verdict'")
    assert "class='banner'" not in _report(tmp_path).read_text()


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
    assert "<th>true_<wbr>ctr</th>" in table  # long headers may wrap


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
def test_every_image_loads_and_nothing_scrolls_sideways_at_1280px(tmp_path: Path):
    path = _report(tmp_path)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--window-size=1280,900",
    ]
    dom = subprocess.run(
        [_browser(), *flags, "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    n = 3 * len(METHODS) + 1
    assert f'data-images-loaded="{n}/{n}"' in dom, dom[-500:]
    # the page script measured the laid-out page: as wide as the window at most
    scroll = int(re.search(r'data-scroll-width="(\d+)"', dom).group(1))
    viewport = int(re.search(r'data-viewport-width="(\d+)"', dom).group(1))
    assert viewport == 1280 and scroll <= viewport, (scroll, viewport)
    assert 'data-tables-scrolling="0"' in dom  # the 16-column metrics table and the grid fit
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_browser(), *flags, f"--screenshot={shot}", path.as_uri()],
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
    assert line in html and "variant-select" in html and "true_<wbr>taste_<wbr>match" in html
