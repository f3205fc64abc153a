"""The texts of the `clip` recipe: training texts with the attributes they pin, class prompts.

A training text describes some attributes of its cover (its title, a motif or palette prompt, a
style description, its image quality); its key says which, so that every cover in the batch the
text also describes counts as a positive (`match_matrix`).
"""

from __future__ import annotations

import numpy as np
import torch

from icg.world.attributes import MOTIFS, PALETTES, STYLE_DIMS, STYLE_LEVELS, Defects

MOTIF_PROMPT = "a cover with a {}"
PALETTE_PROMPT = "a {} cover"

# attribute columns of a key: motif, palette, the style dims, then the defects (blurred,
# noisy, faded as 0/1); -1 = unspecified. Defect words keep image quality in the embedding,
# which the `aesthetic` model reads.
DEFECTS: tuple[str, ...] = ("blurry", "noisy", "faded")
NUM_KEYS = 2 + len(STYLE_DIMS) + len(DEFECTS)
STYLE_PHRASES: dict[str, str] = {
    "center": "centered",
    "left": "on the left",
    "top": "at the top",
    "none": "no frame",
    "thin": "a thin frame",
    "thick": "a thick frame",
    "flat": "a flat background",
}


def style_phrase(dim: str, level: int) -> str:
    """Words for one style level, e.g. ("frame", 1) -> "a thin frame"."""
    word = STYLE_LEVELS[dim][level]
    return STYLE_PHRASES.get(word, word)


def defect_flags(defects: Defects) -> np.ndarray:
    """(3,) 0/1: blurred, noisy, faded."""
    return np.array([defects.blur > 0, defects.noise > 0, defects.fade > 0], dtype=np.int64)


def _quality_phrase(flags: np.ndarray) -> str:
    present = [w for w, f in zip(DEFECTS, flags, strict=True) if f]
    return " and ".join(present) if present else "clean and sharp"


def make_text(
    rng: np.random.Generator,
    title: str,
    motif: int,
    palette: int,
    style: np.ndarray,
    defects: np.ndarray,
) -> tuple[str, np.ndarray]:
    """One training text for a cover and its key: which attributes the text pins down.

    Args:
        defects: (3,) 0/1 flags from `defect_flags`.

    Returns:
        (text, key) with key of shape (NUM_KEYS,): attribute index or -1 when unspecified.
    """
    key = np.full(NUM_KEYS, -1, dtype=np.int64)
    m, p = MOTIFS[motif], PALETTES[palette]
    q0 = 2 + len(STYLE_DIMS)  # first defect column
    r = rng.random()
    if r < 0.38:
        key[:2] = motif, palette
        return title, key
    if r < 0.44:
        key[:2] = motif, palette
        return f"a cover for {title}", key
    if r < 0.55:
        key[0] = motif
        return str(rng.choice([MOTIF_PROMPT.format(m), f"a {m}", m, f"a picture of a {m}"])), key
    if r < 0.66:
        key[1] = palette
        return str(
            rng.choice([PALETTE_PROMPT.format(p), p, f"something {p}", f"a {p} picture"])
        ), key
    if r < 0.75:
        key[:2] = motif, palette
        return str(rng.choice([f"a {p} {m}", f"a {p} cover with a {m}", f"{m}, {p}"])), key
    if r < 0.83:  # image quality only, sometimes with content
        key[q0:] = defects
        if rng.random() < 0.5:
            key[:2] = motif, palette
            return f"a {_quality_phrase(defects)} {p} {m}", key
        return f"a {_quality_phrase(defects)} cover", key
    # style: the full description (with quality), or a few dimensions
    key[:2] = motif, palette
    quality = ""
    if r < 0.92:
        dims = list(range(len(STYLE_DIMS)))
        key[q0:] = defects
        quality = _quality_phrase(defects)
    else:
        dims = sorted(rng.choice(len(STYLE_DIMS), size=int(rng.integers(1, 4)), replace=False))
        if rng.random() < 0.5:
            key[:2] = -1
    for d in dims:
        key[2 + d] = style[d]
    words = [style_phrase(STYLE_DIMS[d], int(style[d])) for d in dims]
    adjectives = [
        w
        for d, w in zip(dims, words, strict=True)
        if STYLE_DIMS[d] in ("brightness", "saturation", "scale")
    ]
    rest = [
        w
        for d, w in zip(dims, words, strict=True)
        if STYLE_DIMS[d] not in ("brightness", "saturation", "scale")
    ]
    subject = f"{p} {m}" if key[0] >= 0 else "cover"
    text = " ".join(["a", *adjectives, subject])
    if rest:
        text += ", " + ", ".join(rest)
    if quality:
        text += ", " + quality
    return text, key


def match_matrix(keys: np.ndarray, attrs: np.ndarray) -> torch.Tensor:
    """Which texts describe which images: bool (T, I) from keys (T, K) and attributes (I, K)."""
    k = keys[:, None, :]  # (T, 1, K)
    return torch.from_numpy(np.all((k < 0) | (k == attrs[None, :, :]), axis=-1))


# Attribute groups for the class-prompt loss: (name, prompts in level order). The first two
# are the zero-shot gate's prompts; the style and defect groups make the image embedding carry
# what the `aesthetic` model and the `sd` prompts need.
ATTRIBUTE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("motif", tuple(MOTIF_PROMPT.format(m) for m in MOTIFS)),
    ("palette", tuple(PALETTE_PROMPT.format(p) for p in PALETTES)),
    ("brightness", ("a dark cover", "a mid cover", "a light cover")),
    ("saturation", ("a muted cover", "a normal cover", "a vivid cover")),
    ("scale", ("a small motif", "a medium motif", "a large motif")),
    ("layout", ("a centered motif", "a motif on the left", "a motif at the top")),
    ("frame", ("a cover with no frame", "a cover with a thin frame", "a cover with a thick frame")),
    ("texture", ("a flat background", "a background with stripes", "a background with dots")),
    ("blur", ("a sharp cover", "a blurry cover")),
    ("noise", ("a clean cover", "a noisy cover")),
    ("fade", ("a crisp cover", "a faded cover")),
)


def class_prompts() -> list[str]:
    """All class prompts, group after group (motif 8, palette 8, then style and defects)."""
    return [p for _, prompts in ATTRIBUTE_GROUPS for p in prompts]
