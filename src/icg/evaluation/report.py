"""A self-contained HTML report: cover grid, metrics table, training curves and configs."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from icg.io import atomic_write_text

# Metrics where lower is better; every other column marks its maximum.
LOWER_IS_BETTER = {"seconds"}
HIDDEN_COLUMNS = {"n_pairs"}


def png_data_uri(image: np.ndarray, scale: int = 2) -> str:
    """uint8 (H, W, 3) -> a data: URI of a PNG, upscaled for display."""
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def curves_figure(curves: dict[str, list[dict]]) -> str | None:
    """Plot training curves {run name: [{"step": s, key: value, ...}, ...]} as one PNG data URI."""
    series = {
        (run, key): ([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r])
        for run, rows in curves.items()
        for key in sorted({k for r in rows for k in r if k != "step"})
    }
    series = {k: v for k, v in series.items() if len(v[0]) > 1}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({key for _, key in series})
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys, strict=False):
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
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
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
    return f"<table class='metrics'><tr><th>method</th>{head}</tr>{''.join(body)}</table>"


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
    return f"<table class='grid'><tr><th>user / item</th>{head}</tr>{''.join(rows)}</table>"


# Marks <body data-images-loaded="ok/total"> once the page has loaded, for headless checks.
LOAD_CHECK = (
    "<script>window.addEventListener('load',()=>{const i=[...document.images];"
    "document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});"
    "</script>"
)

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 24px}
td,th{border:1px solid #ddd;padding:4px 6px;font-size:13px;text-align:center}
td.best{font-weight:bold;background:#e8f5e9}
th.rowlabel{text-align:left;max-width:220px;font-weight:normal}
img{display:block;image-rendering:pixelated}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}
"""


def write_report(
    path: Path | str,
    *,
    metrics: dict,
    grid: list[dict],
    curves: dict[str, list[dict]],
    configs: dict[str, dict],
    notes: Sequence[str] = (),
) -> Path:
    """Write a self-contained report.html (every image embedded as a data URI), atomically."""
    figure = curves_figure(curves)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>icg evaluation</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>icg evaluation report</h1>",
        "<h2>Metrics</h2>",
        metrics_table(metrics["methods"]),
        personal_gain_line(metrics.get("personal_gain")),
        "".join(f"<p>{html.escape(n)}</p>" for n in notes),
        "<h2>Covers: users × items, every method side by side</h2>",
        cover_grid(grid),
        "<h2>Training curves</h2>",
        f'<img src="{figure}" alt="training curves">' if figure else "<p>No curves recorded.</p>",
        "<h2>Configs</h2>",
        "".join(
            f"<h3>{html.escape(name)}</h3><pre>{html.escape(json.dumps(cfg, indent=2, default=str))}</pre>"
            for name, cfg in configs.items()
        ),
        LOAD_CHECK,
        "</body></html>",
    ]
    return atomic_write_text(path, "".join(parts))
