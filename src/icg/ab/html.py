"""The self-contained HTML page of an A/B report: tables and an inline SVG forest plot of the
lift (with its interval) overall, per segment and per day."""

from __future__ import annotations

from html import escape

ROW_H, LEFT, WIDTH, PLOT_W = 18, 260, 760, 440


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def _rows(report: dict, metric: str) -> list[tuple[str, dict]]:
    """(label, lift) rows of the plot: overall, then each segment value, per treatment arm."""
    rows = []
    for arm, lift in report["lift"].items():
        rows.append((f"{arm}: overall", lift[metric]))
        for seg, values in report["segments"].items():
            for value, part in values.items():
                if arm in part["lift"]:
                    rows.append((f"{arm}: {seg} {value}", part["lift"][arm][metric]))
    return rows


def forest_svg(rows: list[tuple[str, dict]], title: str) -> str:
    """An SVG forest plot: one row per (label, lift) with its interval, a line at 0."""
    finite = [r for _, r in rows if all(abs(r[k]) < 1e9 for k in ("low", "high"))]
    if not finite:
        return f"<p>{escape(title)}: no interval to plot.</p>"
    lo = min(min(r["low"] for r in finite), 0.0)
    hi = max(max(r["high"] for r in finite), 0.0)
    span = (hi - lo) or 1.0

    def x(v: float) -> float:
        return LEFT + (min(max(v, lo), hi) - lo) / span * PLOT_W

    height = ROW_H * (len(rows) + 3)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="12" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{x(0):.1f}" y1="16" x2="{x(0):.1f}" y2="{height - 20}" stroke="#999" '
        'stroke-dasharray="3,3"/>',
    ]
    for k, (label, r) in enumerate(rows):
        y = ROW_H * (k + 2)
        colour = "#1a7f37" if r["low"] > 0 else "#cf222e" if r["high"] < 0 else "#444"
        parts += [
            f'<text x="4" y="{y + 4}">{escape(label)}</text>',
            f'<line x1="{x(r["low"]):.1f}" y1="{y}" x2="{x(r["high"]):.1f}" y2="{y}" '
            f'stroke="{colour}" stroke-width="2"/>',
            f'<circle cx="{x(r["lift"]):.1f}" cy="{y}" r="3" fill="{colour}"/>',
            f'<text x="{LEFT + PLOT_W + 8}" y="{y + 4}">{_pct(r["lift"])} '
            f"[{_pct(r['low'])}, {_pct(r['high'])}]</text>",
        ]
    axis_y = height - 8
    parts += [
        f'<text x="{LEFT}" y="{axis_y}">{_pct(lo)}</text>',
        f'<text x="{LEFT + PLOT_W - 40}" y="{axis_y}">{_pct(hi)}</text>',
        "</svg>",
    ]
    return "\n".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict) -> str:
    """The report page: arms, lifts, SRM, the examination curve and two forest plots."""
    arms = _table(
        ["arm", "users", "impressions", "clicks", "CTR", "position-adjusted CTR"],
        [
            [a, str(s["users"]), str(s["impressions"]), str(s["clicks"]),
             f"{s['ctr']:.4f} ± {s['ctr_se']:.4f}",
             f"{s['adjusted_ctr']:.4f} ± {s['adjusted_ctr_se']:.4f}"]
            for a, s in report["arms"].items()
        ],
    )  # fmt: skip
    level = f"{100 * report['level']:.0f}%"
    lifts = _table(
        ["arm", f"CTR lift [{level}]", "p", f"adjusted lift [{level}]", "p", "users/arm @80%"],
        [
            [a, f"{_pct(r['ctr']['lift'])} [{_pct(r['ctr']['low'])}, {_pct(r['ctr']['high'])}]",
             f"{r['ctr']['p_value']:.3g}",
             f"{_pct(r['adjusted_ctr']['lift'])} [{_pct(r['adjusted_ctr']['low'])}, "
             f"{_pct(r['adjusted_ctr']['high'])}]",
             f"{r['adjusted_ctr']['p_value']:.3g}", f"{r['users_needed_per_arm']:.0f}"]
            for a, r in report["lift"].items()
        ],
    )  # fmt: skip
    srm = report["srm"]
    verdict = "MISMATCH: do not trust this test" if srm["mismatch"] else "no mismatch"
    curve = report["examination"]["curve"]
    exam = ", ".join(f"{e:.3f}" for e in curve) if curve else "none"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>A/B report</title>
<style>body{{font-family:sans-serif;max-width:820px;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px}}</style>
</head><body>
<h1>A/B report: {escape(report["arm_column"])}, control {escape(report["control"])}</h1>
{"".join(f"<p><b>Warning:</b> {escape(w)}</p>" for w in report.get("warnings", []))}
<h2>Arms</h2>{arms}
<h2>Lift over control (clustered by user, delta method)</h2>{lifts}
<p>Sample-ratio check: chi² {srm["chi2"]:.2f}, p = {srm["p_value"]:.3g}: {verdict}.</p>
<p>Examination curve ({escape(report["examination"]["source"])}): {exam}</p>
{forest_svg(_rows(report, "ctr"), "CTR lift")}
{forest_svg(_rows(report, "adjusted_ctr"), "Position-adjusted CTR lift")}
</body></html>
"""
