"""The report's headline chart: one metric per method with its 95% interval, as inline SVG.

Drawn in Python so that report.html stays one self-contained file that renders crisply at any
zoom, with no plotting library and nothing fetched from the network.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

# How a method is drawn: (fill, stroke) of its marker and the legend's words for it.
STYLES = {
    "best_of_k": ("#e65100", "#e65100", "ICG, best of K draws"),
    "one_draw": ("#ffffff", "#e65100", "ICG, one draw"),
    "platform": ("#1565c0", "#1565c0", "the platform's covers"),
    "other": ("#9e9e9e", "#757575", "other baselines"),
}

ROW_H = 22  # px per method
LABEL_W = 150  # px left of the plot for the method names
PLOT_W = 440  # px of the value axis
VALUE_W = 170  # px right of the plot for "0.338 [0.301, 0.375]"
TOP = 34  # px above the first row: the legend
BOTTOM = 34  # px below the last row: the axis ticks and its label


@dataclass(frozen=True)
class ChartRow:
    """One method: its mean, its interval (NaN when unknown) and how it is drawn (`STYLES`)."""

    name: str
    mean: float
    low: float = math.nan
    high: float = math.nan
    role: str = "other"


def nice_step(span: float) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving 4 to 8 ticks over ``span``."""
    if not span > 0:
        return 1.0
    raw = span / 8
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def interval_chart(
    rows: list[ChartRow],
    *,
    metric: str,
    ceiling: tuple[str, float] | None = None,
) -> str:
    """An SVG dot-and-whisker chart: a row per method (in the given order), its mean as a dot
    and its interval as a whisker, ``ceiling`` (e.g. ``("oracle", 0.63)``) as a dashed line.

    Args:
        rows: the methods, top to bottom.
        metric: the value axis' label.
        ceiling: a reference value drawn across every row, or None.
    """
    if not rows:
        return ""
    values = [v for r in rows for v in (r.mean, r.low, r.high) if math.isfinite(v)]
    if ceiling is not None and math.isfinite(ceiling[1]):
        values.append(ceiling[1])
    lo = min(0.0, min(values, default=0.0))
    hi = max(values, default=1.0)
    step = nice_step(hi - lo)
    lo, hi = step * math.floor(lo / step), step * math.ceil(hi / step)
    if hi <= lo:
        hi = lo + step

    def x(v: float) -> float:
        return LABEL_W + (v - lo) / (hi - lo) * PLOT_W

    width = LABEL_W + PLOT_W + VALUE_W
    height = TOP + ROW_H * len(rows) + BOTTOM
    bottom = TOP + ROW_H * len(rows)
    parts = []
    # legend: only the roles that appear
    lx = LABEL_W
    for role in dict.fromkeys(r.role for r in rows):
        fill, stroke, words = STYLES[role]
        parts.append(
            f'<circle cx="{lx + 5}" cy="12" r="4.5" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="1.5"/><text x="{lx + 14}" y="16">{html.escape(words)}</text>'
        )
        lx += 14 + 7 * len(words) + 18
    # axis: grid lines and ticks
    n_ticks = round((hi - lo) / step)
    for k in range(n_ticks + 1):
        v = lo + k * step
        parts.append(
            f'<line x1="{x(v):.1f}" y1="{TOP - 4}" x2="{x(v):.1f}" y2="{bottom}" '
            f'stroke="#eeeeee"/><text x="{x(v):.1f}" y="{bottom + 14}" '
            f'text-anchor="middle">{v:g}</text>'
        )
    parts.append(
        f'<text x="{LABEL_W + PLOT_W / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'class="axis">{html.escape(metric)}</text>'
    )
    if ceiling is not None and math.isfinite(ceiling[1]):
        cx = x(ceiling[1])
        parts.append(
            f'<line x1="{cx:.1f}" y1="{TOP - 4}" x2="{cx:.1f}" y2="{bottom}" stroke="#2e7d32" '
            f'stroke-dasharray="4 3" stroke-width="1.5"/><text x="{cx - 4:.1f}" y="{bottom - 4}" '
            f'text-anchor="end" fill="#2e7d32">{html.escape(ceiling[0])} {_fmt(ceiling[1])}</text>'
        )
    for k, r in enumerate(rows):
        y = TOP + ROW_H * k + ROW_H / 2
        fill, stroke, _ = STYLES[r.role]
        weight = ' font-weight="bold"' if r.role in ("best_of_k", "platform") else ""
        parts.append(
            f'<text x="{LABEL_W - 8}" y="{y + 4:.1f}" text-anchor="end"{weight}>'
            f"{html.escape(r.name)}</text>"
        )
        text = _fmt(r.mean)
        if math.isfinite(r.low) and math.isfinite(r.high):
            parts.append(
                f'<line x1="{x(r.low):.1f}" y1="{y:.1f}" x2="{x(r.high):.1f}" y2="{y:.1f}" '
                f'stroke="{stroke}" stroke-width="1.5"/>'
                + "".join(
                    f'<line x1="{x(v):.1f}" y1="{y - 4:.1f}" x2="{x(v):.1f}" y2="{y + 4:.1f}" '
                    f'stroke="{stroke}" stroke-width="1.5"/>'
                    for v in (r.low, r.high)
                )
            )
            text += f" [{_fmt(r.low)}, {_fmt(r.high)}]"
        parts.append(
            f'<circle cx="{x(r.mean):.1f}" cy="{y:.1f}" r="4.5" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="1.5"/><text x="{LABEL_W + PLOT_W + 10}" '
            f'y="{y + 4:.1f}">{text}</text>'
        )
    label = html.escape(f"{metric} per method with 95% intervals")
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{label}" '
        f'font-family="system-ui,sans-serif" font-size="12">'
        f"<title>{label}</title>{''.join(parts)}</svg>"
    )
