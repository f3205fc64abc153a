"""The gates of `icg-adapter`: covers drawn with an EMPTY text prompt keep their reference's
motif, palette and style, read off the pixels by the truth reader (`icg.world.truth`).

The MLLM reads each reference (title + cover) through the meta tokens; the adapter's tokens are
then the only thing that tells the base model what to draw. The same draws with the adapter off
(``icg_scale=0``: the base model with an empty prompt) are reported as ``no_adapter_*``, the
level an adapter that carries nothing would reach.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from icg.config import DEFAULT_GUIDANCE, DEFAULT_STEPS
from icg.pipeline import ICGPipeline
from icg.world.attributes import STYLE_DIMS
from icg.world.readout import style_levels
from icg.world.truth import read_attributes  # evaluation only
from icg.zoo import evaldata

THRESHOLDS = {"motif_kept": 0.90, "palette_kept": 0.90, "style_agreement_min": 0.70}


def agreement_chance(reference: np.ndarray, drawn: np.ndarray) -> float:
    """The agreement of two independent labelings with these marginals:
    ``sum_l P_ref(l) P_drawn(l)`` (Cohen 1960's expected agreement ``p_e``)."""
    labels = np.union1d(reference, drawn)
    p_ref = np.array([(reference == v).mean() for v in labels])
    p_drawn = np.array([(drawn == v).mean() for v in labels])
    return float(p_ref @ p_drawn)


def gate_metrics(
    ref_motif: np.ndarray,
    ref_palette: np.ndarray,
    ref_style: np.ndarray,
    drawn_motif: np.ndarray,
    drawn_palette: np.ndarray,
    drawn_style: np.ndarray,
) -> dict[str, float]:
    """The gates' arithmetic: how often a draw keeps its reference's attributes.

    Args:
        ref_motif, ref_palette: (N,) the references' motif and palette indices.
        ref_style: (N, S) the references' style levels (`icg.world.attributes.STYLE_DIMS`).
        drawn_motif, drawn_palette: (N,) as read off the draws.
        drawn_style: (N, S) as read off the draws (`icg.world.readout.style_levels`).

    Returns:
        ``motif_kept``, ``palette_kept``, ``content_kept`` (both at once), per style dimension
        ``style_agreement_<dim>`` and its chance level ``style_chance_<dim>`` (`agreement_chance`),
        ``style_agreement_min`` and ``style_agreement_mean`` over dimensions, and ``n``.
    """
    ref_style, drawn_style = np.asarray(ref_style), np.asarray(drawn_style)
    n = len(ref_motif)
    for name, a in (("ref_palette", ref_palette), ("drawn_motif", drawn_motif),
                    ("drawn_palette", drawn_palette)):  # fmt: skip
        if len(a) != n:
            raise ValueError(f"{name}: expected {n} entries (one per reference), got {len(a)}")
    if ref_style.shape != (n, len(STYLE_DIMS)) or drawn_style.shape != ref_style.shape:
        raise ValueError(
            f"ref_style/drawn_style: expected ({n}, {len(STYLE_DIMS)}), "
            f"got {ref_style.shape} and {drawn_style.shape}"
        )
    motif = np.asarray(drawn_motif) == np.asarray(ref_motif)  # (N,)
    palette = np.asarray(drawn_palette) == np.asarray(ref_palette)  # (N,)
    out = {
        "motif_kept": float(motif.mean()),
        "palette_kept": float(palette.mean()),
        "content_kept": float((motif & palette).mean()),
        "n": float(n),
    }
    per_dim = {}
    for i, d in enumerate(STYLE_DIMS):
        per_dim[d] = float((drawn_style[:, i] == ref_style[:, i]).mean())
        out[f"style_agreement_{d}"] = per_dim[d]
        out[f"style_chance_{d}"] = agreement_chance(ref_style[:, i], drawn_style[:, i])
    out["style_agreement_min"] = min(per_dim.values())
    out["style_agreement_mean"] = float(np.mean(list(per_dim.values())))
    return out


@torch.no_grad()
def draw_empty_prompt(
    pipe: ICGPipeline,
    gate_set: evaldata.GateSet,
    *,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    batch_size: int = 64,
    icg_scale: float | None = None,
) -> np.ndarray:
    """One cover per reference (title + cover) with the text prompt ``""``; uint8 (N, H, W, 3).

    The draw of reference ``i`` uses the generator seeded ``seed + i``.
    """
    out = []
    for start in range(0, len(gate_set.titles), batch_size):
        titles = gate_set.titles[start : start + batch_size]
        images = [Image.fromarray(a) for a in gate_set.images[start : start + batch_size]]
        drawn = pipe(
            titles,
            images,
            prompt="",
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(seed + start + j) for j in range(len(titles))],
            output_type="np",
            icg_scale=icg_scale,
        ).images  # (B, H, W, 3) float in [0, 1]
        out.append((np.asarray(drawn) * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def reference_style(gate_set: evaldata.GateSet) -> np.ndarray:
    """(N, S) style levels of the references: the truth's when known (fresh renders), else read
    off the reference covers the same way as the draws."""
    if gate_set.style is not None:
        return np.asarray(gate_set.style)
    return style_levels(read_attributes(gate_set.images))


def measure(
    path: str | Path,
    gate_set: evaldata.GateSet,
    *,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    pipe: ICGPipeline | None = None,
) -> dict[str, float]:
    """Gate metrics of the ICG adapter folder at `path` (or the loaded `pipe`) on `gate_set`.

    Every reference is drawn once with the empty prompt (`draw_empty_prompt`), then again with
    the adapter off (``no_adapter_*``, the base model alone with the same prompt and seeds).
    """
    pipe = pipe or ICGPipeline.from_pretrained(path)
    pipe.base.set_progress_bar_config(disable=True)
    ref_style = reference_style(gate_set)
    out = {}
    for prefix, scale in (("", None), ("no_adapter_", 0.0)):
        drawn = read_attributes(
            draw_empty_prompt(pipe, gate_set, steps=steps, guidance=guidance, seed=seed,
                              icg_scale=scale)
        )  # fmt: skip
        metrics = gate_metrics(
            gate_set.motif, gate_set.palette, ref_style,
            drawn.motif, drawn.palette, style_levels(drawn),
        )  # fmt: skip
        out |= {f"{prefix}{k}": v for k, v in metrics.items() if not (prefix and k == "n")}
    return out


def evaluate(
    path: str | Path, world_dir: str | Path | None = None, limit: int | None = None
) -> dict[str, float]:
    """Gate metrics of the ICG adapter folder at `path`: on the items (title + reference
    cover) of a CoverWorld folder, or on 256 fresh renders of the world seed range (never a
    training render) when `world_dir` is None."""
    if world_dir is None:
        return measure(path, evaldata.fresh_covers(limit or 256))
    return measure(path, evaldata.world_items(Path(world_dir), limit=limit))
