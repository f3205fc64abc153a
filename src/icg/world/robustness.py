"""How well the truth reads degraded covers: the oracle's robustness report.

Fresh renders of known specs (a seed range no model trains on) are degraded in each named way
of `icg.world.degrade.REPORT_DEGRADATIONS` (plus any extra, such as a VAE round trip), read by
the full truth reader (`icg.world.readout.read`: the oracle for motif and layout-type style,
analytic colour measures for palette, brightness and saturation), and compared with the specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from icg.io import atomic_path
from icg.world.attributes import MOTIFS, PALETTES
from icg.world.degrade import REPORT_DEGRADATIONS, Degradation
from icg.world.oracle import OracleNet
from icg.world.readout import read, style_accuracy, style_levels
from icg.world.sampling import sample_covers
from icg.world.seeds import oracle_seed

REPORT_SEED_INDEX = 1_000_000  # oracle range, far from every training sample of `train_oracle`


def report_covers(n: int, defect_rate: float = 0.0):
    """The report's covers: `n` fresh renders of known specs (oracle range, never trained on).

    Defect-free by default, so that each degradation is the only thing that changes.
    """
    return sample_covers(n, oracle_seed(REPORT_SEED_INDEX), defect_rate=defect_rate)


def degradation_report(
    n: int = 2000,
    extra: Mapping[str, Degradation] | None = None,
    defect_rate: float = 0.0,
    net: OracleNet | None = None,
    grid: Path | None = None,
) -> dict[str, dict[str, float]]:
    """Accuracy of the truth reader per degradation.

    Args:
        n: fresh renders per degradation.
        extra: more named degradations (e.g. ``{"vae": roundtrip}``), run after the listed ones.
        defect_rate: the platform's render defects (blur, fade, noise, shift) on the covers
            before they are degraded; 0 (the default) isolates each degradation.
        net: the oracle to read with (default: the shipped one).
        grid: if given, a PNG of misread covers is written there (`disagreement_grid`).

    Returns:
        degradation name -> {"motif", "palette", "style", "style_<dim>"...: accuracy, "n"}.
        ``style`` is the mean over the style dimensions.
    """
    sample = report_covers(n, defect_rate)
    degradations = dict(REPORT_DEGRADATIONS) | dict(extra or {})
    report: dict[str, dict[str, float]] = {}
    misread: dict[str, list[tuple[np.ndarray, str]]] = {}
    for name, degrade in degradations.items():
        images = degrade(sample.images)
        r = read(images, net=net)
        levels = style_levels(r)
        row = {
            "motif": float((r.motif == sample.motif).mean()),
            "palette": float((r.palette == sample.palette).mean()),
        }
        per_dim = style_accuracy(levels, sample.style)
        row["style"] = float(np.mean(list(per_dim.values())))
        row |= {f"style_{d}": v for d, v in per_dim.items()}
        row["n"] = n
        report[name] = row
        wrong = np.flatnonzero((r.motif != sample.motif) | (r.palette != sample.palette))
        misread[name] = [
            (
                images[i],
                f"{MOTIFS[sample.motif[i]]}/{PALETTES[sample.palette[i]]}"
                f" read {MOTIFS[r.motif[i]]}/{PALETTES[r.palette[i]]}",
            )
            for i in wrong[:8]
        ]
    if grid is not None:
        disagreement_grid(misread, grid)
    return report


def disagreement_grid(misread: Mapping[str, list[tuple[np.ndarray, str]]], out: Path) -> None:
    """A PNG with one row per degradation that has misread covers: up to 8 of them at 2x, each
    captioned with the truth and the reading (``star/red read circle/red``)."""
    tile, caption, label = 128, 32, 110
    cols = max([len(v) for v in misread.values()] + [1])
    rows = [name for name, shown in misread.items() if shown]
    canvas = Image.new("RGB", (label + cols * tile, max(1, len(rows)) * (tile + caption)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(rows):
        y = r * (tile + caption)
        draw.text((4, y + tile // 2), name, fill="black")
        for c, (image, text) in enumerate(misread[name]):
            x = label + c * tile
            canvas.paste(Image.fromarray(image).resize((tile, tile), Image.NEAREST), (x, y))
            draw.text((x + 2, y + tile + 2), text.replace(" read ", "\nread "), fill="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
