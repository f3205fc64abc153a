"""A self-contained HTML report: verdict and headline chart first, then the metrics table,
cover grid, training curves and configs."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from icg.evaluation.report_chart import ChartRow, interval_chart
from icg.io import atomic_write_text

# Metrics where lower is better; every other column marks its maximum.
LOWER_IS_BETTER = {"seconds"}
HIDDEN_COLUMNS = {"n_pairs"}
# The ICG methods that keep the best of K draws (`methods.ICG_METHODS` with ``best_of_k``; a test
# keeps the two in step), and the covers a platform has without ICG.
BEST_OF_K = ("icg", "icg-nouser")
PLATFORM = ("reference", "variant-select")
# The verdict's metric: the truth's CTR where the data has a truth, else the first model-side one.
MODEL_SIDE = ("preference_score", "aesthetic_reward", "clipscore")


def png_data_uri(image: np.ndarray, scale: int = 2) -> str:
    """uint8 (H, W, 3) -> a data: URI of a PNG, upscaled for display."""
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


TRIPWIRE_CURVES = {"reward/tripwire_train": "training half", "reward/tripwire_heldout": "held-out"}
TRIPWIRE_FIRED = "reward/tripwire_fired"  # its row's step: where it fired; its value: the kept step
TRIPWIRE_PANEL = "reward-hacking tripwire (preference, probe set)"


def tripwire_marks(curves: dict[str, list[dict]]) -> dict[str, tuple[int, int]]:
    """Per run whose tripwire fired: ``(step it fired at, step it kept)``."""
    return {
        run: (row["step"], int(row[TRIPWIRE_FIRED]))
        for run, rows in curves.items()
        for row in rows
        if isinstance(row.get(TRIPWIRE_FIRED), int | float)
    }


def _plot_tripwire(ax, curves: dict[str, list[dict]], marks: dict[str, tuple[int, int]]) -> None:
    """Both tripwire curves of every run in one panel, a line where it fired, a dot where it kept."""
    for run, rows in curves.items():
        for key, label in TRIPWIRE_CURVES.items():
            x = [r["step"] for r in rows if key in r]
            y = [r[key] for r in rows if key in r]
            if len(x) < 2:
                continue
            style = "-" if key.endswith("heldout") else "--"
            (line,) = ax.plot(x, y, style, label=f"{run}: {label}", linewidth=1.2)
            if run in marks and key.endswith("heldout"):
                fired, kept = marks[run]
                ax.axvline(fired, color="tab:red", linestyle=":", linewidth=1.0)
                ax.annotate("tripwire", (fired, max(y)), fontsize=6, color="tab:red")
                if kept in x:
                    ax.plot([kept], [y[x.index(kept)]], "o", color=line.get_color())


def curves_figure(curves: dict[str, list[dict]]) -> str | None:
    """Plot training curves {run name: [{"step": s, key: value, ...}, ...]} as one PNG data URI.

    The tripwire's two curves share one panel, with a dotted line where it fired and a dot on
    the held-out curve at the step it kept (`icg.training.tripwire`)."""
    series = {
        (run, key): ([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r])
        for run, rows in curves.items()
        for key in sorted({k for r in rows for k in r if k != "step"})
        if key != TRIPWIRE_FIRED
    }
    series = {k: v for k, v in series.items() if len(v[0]) > 1}
    if not series:
        return None
    # import cost: matplotlib takes about a second to import; only the curves figure needs it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display backend

    keys = sorted({TRIPWIRE_PANEL if key in TRIPWIRE_CURVES else key for _, key in series})
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys, strict=False):
        if key == TRIPWIRE_PANEL:
            _plot_tripwire(ax, curves, tripwire_marks(curves))
        for (run, k), (x, y) in series.items():
            if k == key:
                ax.plot(x, y, label=run, linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def metrics_table(methods: dict[str, dict[str, float]]) -> str:
    """HTML table of methods × metrics with the best non-oracle value per column in bold."""
    columns = [
        c for c in dict.fromkeys(k for m in methods.values() for k in m) if c not in HIDDEN_COLUMNS
    ]
    best = {}
    for c in columns:
        vals = {
            m: v[c]
            for m, v in methods.items()
            if m != "oracle" and isinstance(v.get(c), (int, float))
        }
        if vals:
            best[c] = (min if c in LOWER_IS_BETTER else max)(vals.values())
    # long names may break after an underscore, so the table fits the page
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in columns)
    body = []
    for name, vals in methods.items():
        cells = []
        for c in columns:
            v = vals.get(c)
            if not isinstance(v, (int, float)):
                cells.append("<td>–</td>")
                continue
            text = f"{v:.4f}" if isinstance(v, float) else str(v)
            mark = name != "oracle" and c in best and v == best[c]
            cells.append(f'<td class="{"best" if mark else ""}">{text}</td>')
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return (
        f"<div class='scroll'><table class='metrics'><tr><th>method</th>{head}</tr>"
        f"{''.join(body)}</table></div>"
    )


def method_role(name: str, candidates: int | None) -> str:
    """How the chart draws a method (`report_chart.STYLES`)."""
    if name in PLATFORM:
        return "platform"
    if name.startswith("icg"):
        best_of = name in BEST_OF_K and (candidates or 0) > 1
        return "best_of_k" if best_of else "one_draw"
    return "other"


def headline_metric(methods: dict[str, dict]) -> str | None:
    """``true_ctr`` where the evaluation had a truth, else the first model-side metric."""
    columns = {c for m in methods.values() for c in m}
    return next((c for c in ("true_ctr", *MODEL_SIDE) if c in columns), None)


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def _interval(metrics: dict, method: str, metric: str) -> tuple[float, float]:
    """(low, high) of ``metrics["intervals"][method][metric]``, NaN where it is absent."""
    ci = metrics.get("intervals", {}).get(method, {}).get(metric, {})
    return _number(ci.get("ci_low")), _number(ci.get("ci_high"))


def _value(metrics: dict, method: str, metric: str) -> str:
    mean = _number(metrics["methods"][method].get(metric))
    low, high = _interval(metrics, method, metric)
    ci = f" [{low:.3f}, {high:.3f}]" if math.isfinite(low) and math.isfinite(high) else ""
    return f"{mean:.3f}{ci}"


def verdict(metrics: dict, candidates: int | None = None) -> str:
    """The report's opening paragraph: which method wins on the headline metric, ICG's one draw
    and best of K against the platform's covers, and the oracle's headroom."""
    methods = metrics["methods"]
    metric = headline_metric(methods)
    scored = {
        m: v
        for m, vals in methods.items()
        if m != "oracle" and math.isfinite(v := _number(vals.get(metric)))
    }
    if metric is None or not scored:
        return "<p class='verdict'>No metric that compares the methods was recorded.</p>"
    k = f"best of {candidates}" if candidates and candidates > 1 else "one draw"
    names = {
        "icg": f"ICG ({k})",
        "icg-single": "ICG's one draw",
        "reference": "the platform's reference covers",
        "variant-select": "<code>variant-select</code> (the platform's covers, picked per user)",
    }
    best = max(scored, key=scored.get)
    others = [
        f"{names[m]} {_value(metrics, m, metric)}"
        for m in ("icg", "icg-single", "reference", "variant-select")
        if m in scored and m != best and not (m == "icg-single" and candidates == 1)
    ]
    winner = names.get(best, f"<code>{html.escape(best)}</code>")
    n = methods[best].get("n_pairs")
    over = f" over {n} (user, item) pairs" if n else ""
    if metric == "true_ctr":
        lead = f"<b>{winner} has the highest true CTR{over}: {_value(metrics, best, metric)}</b>"
        oracle = _number(methods.get("oracle", {}).get(metric))
        tail = (
            f"; the oracle (the truth's best cover) reaches {oracle:.3f}, {oracle - scored[best]:.3f}"
            " of headroom above the best method."
            if math.isfinite(oracle)
            else "."
        )
    else:
        lead = (
            "This data has no truth (only a CoverWorld folder has <code>truth/</code>), so true "
            f"CTR is not available; on the model-side <code>{metric}</code> (scored by models "
            f"that ICG's own reward is built from, so it favours ICG) <b>{winner} leads{over}: "
            f"{_value(metrics, best, metric)}</b>"
        )
        tail = "."
    listed = ", ".join(others[:-1]) + " and " + others[-1] if len(others) > 1 else "".join(others)
    against = f", against {listed}" if others else ""
    return f"<p class='verdict'>{lead}{against}{tail}</p>"


def headline_chart(metrics: dict, candidates: int | None = None) -> str:
    """The headline metric per method with its 95% interval (`report_chart`) and a caption that
    says where the intervals come from."""
    methods = metrics["methods"]
    metric = headline_metric(methods)
    if metric is None:
        return ""
    rows = [
        ChartRow(m, mean, *_interval(metrics, m, metric), role=method_role(m, candidates))
        for m, vals in methods.items()
        if m != "oracle" and math.isfinite(mean := _number(vals.get(metric)))
    ]
    oracle = _number(methods.get("oracle", {}).get(metric))
    chart = interval_chart(
        rows, metric=metric, ceiling=("oracle", oracle) if math.isfinite(oracle) else None
    )
    if any(math.isfinite(r.low) for r in rows):
        source = (
            "whiskers: a normal 95% interval of the mean over the pairs (mean ± 1.96 s.d./√n, "
            "<code>intervals</code> in metrics.json). Each interval is one method's own, not a "
            "paired difference: methods on the same pairs can differ beyond what overlapping "
            "intervals suggest (paired intervals: <code>benchmarks/base_comparison.py</code>)."
        )
    else:
        source = "no intervals: this metrics.json has no per-pair <code>intervals</code>."
    return (
        f"<figure class='headline'>{chart}<figcaption><code>{metric}</code> per method; dot: "
        f"the mean over the evaluation's pairs; {source}</figcaption></figure>"
    )


def personal_gain_line(gain: dict | None) -> str:
    """The report's "personal gain" paragraph (`icg.evaluation.personal`), or "" without one."""
    if not gain:
        return ""
    return (
        "<p class='gain'><b>Personal gain</b> (user-swap control): icg's single-draw cover made "
        "for user A minus the one made for a user of another taste segment on the same noise "
        f"seed, both in true CTR for A: <b>{gain['mean']:+.4f}</b>, 95% CI "
        f"[{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}] over {gain['n']} pairs.</p>"
    )


def cover_grid(grid: list[dict]) -> str:
    """Rows of {"label": str, "title": str, "covers": {method: uint8 image}}."""
    if not grid:
        return "<p>No covers.</p>"
    methods = list(grid[0]["covers"])
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    rows = []
    for row in grid:
        cells = "".join(
            f'<td><img src="{png_data_uri(row["covers"][m])}" alt="{html.escape(m)}"></td>'
            for m in methods
        )
        label = f"{html.escape(row['label'])}<br><small>{html.escape(row['title'])}</small>"
        rows.append(f"<tr><th class='rowlabel'>{label}</th>{cells}</tr>")
    return (
        f"<div class='scroll'><table class='grid'><tr><th>user / item</th>{head}</tr>"
        f"{''.join(rows)}</table></div>"
    )


# Marks <body data-images-loaded="ok/total" data-scroll-width data-viewport-width
# data-tables-scrolling> once the page has loaded, for headless checks: the page must not scroll
# sideways, and at a desktop width no table should need its scroll wrapper either.
LOAD_CHECK = (
    "<script>window.addEventListener('load',()=>{const i=[...document.images];"
    "const d=document.body.dataset,e=document.documentElement;"
    "d.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;"
    "d.scrollWidth=e.scrollWidth;d.viewportWidth=e.clientWidth;"
    "d.tablesScrolling=[...document.querySelectorAll('div.scroll')]"
    ".filter(x=>x.scrollWidth>x.clientWidth).length;});"
    "</script>"
)

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 24px}
td,th{border:1px solid #ddd;padding:4px 6px;font-size:13px;text-align:center}
td.best{font-weight:bold;background:#e8f5e9}
th.rowlabel{text-align:left;font-weight:normal;overflow-wrap:anywhere}
div.scroll{max-width:100%;overflow-x:auto}
table.metrics td,table.metrics th{padding:3px 5px;font-size:12px}
table.metrics tr>th:first-child{white-space:nowrap;text-align:left}
table.grid{table-layout:fixed;width:100%}
table.grid th:first-child{width:150px}
table.grid img{width:100%;max-width:128px;height:auto;margin:auto}
img{display:block;image-rendering:pixelated}
img.figure{image-rendering:auto;max-width:100%;height:auto}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}
p.verdict{font-size:15px;line-height:1.5;max-width:1000px}
div.banner{background:#fff3e0;border:2px solid #e65100;padding:10px 14px;margin:12px 0;
  max-width:1000px;font-size:15px}
figure.headline{margin:8px 0 24px}
figure.headline svg{max-width:100%;height:auto}
figure.headline svg text.axis{fill:#555}
figcaption{font-size:12px;color:#555;max-width:800px}
"""


def banner_html(text: str) -> str:
    """Plain text with `backticked` spans as code, everything else escaped."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def write_report(
    path: Path | str,
    *,
    metrics: dict,
    grid: list[dict],
    curves: dict[str, list[dict]],
    configs: dict[str, dict],
    notes: Sequence[str] = (),
    banner: str = "",
) -> Path:
    """Write a self-contained report.html (every image embedded as a data URI), atomically.

    It opens with ``banner`` when given (plain text with `code` spans, e.g. the quick demo's
    smoke-test warning), then the verdict (`verdict`) and the headline chart (`headline_chart`).
    """
    figure = curves_figure(curves)
    candidates = configs.get("evaluation", {}).get("candidates")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>icg evaluation</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>icg evaluation report</h1>",
        f"<div class='banner'>{banner_html(banner)}</div>" if banner else "",
        verdict(metrics, candidates),
        headline_chart(metrics, candidates),
        "<h2>Metrics</h2>",
        metrics_table(metrics["methods"]),
        personal_gain_line(metrics.get("personal_gain")),
        "".join(f"<p>{html.escape(n)}</p>" for n in notes),
        "<h2>Covers: users × items, every method side by side</h2>",
        cover_grid(grid),
        "<h2>Training curves</h2>",
        f'<img class="figure" src="{figure}" alt="training curves">'
        if figure
        else "<p>No curves recorded.</p>",
        "".join(
            f"<p>Reward-hacking tripwire of {html.escape(run)}: fired at step {fired} (held-out "
            f"reward down while the training reward rose); the adapter is step {kept}'s.</p>"
            for run, (fired, kept) in tripwire_marks(curves).items()
        ),
        "<h2>Configs</h2>",
        "".join(
            f"<h3>{html.escape(name)}</h3><pre>{html.escape(json.dumps(cfg, indent=2, default=str))}</pre>"
            for name, cfg in configs.items()
        ),
        LOAD_CHECK,
        "</body></html>",
    ]
    return atomic_write_text(path, "".join(parts))
