"""Item titles from a grammar with synonyms, distractors, ambiguity and mess.

`make_title` writes a title for known content; `title_meaning` is the world's reading of a
title as distributions over motifs and palettes (ground truth of "what titles mean").
"""

from __future__ import annotations

import re

import numpy as np

from icg.world.attributes import MOTIFS, PALETTES

# word -> {attribute value: weight}; several meanings make a word ambiguous
MOTIF_WORDS: dict[str, dict[str, float]] = {
    **{w: {"circle": 1.0} for w in ("circle", "orb", "disc", "sphere", "globe", "dot")},
    **{w: {"square": 1.0} for w in ("square", "box", "block", "tile", "cube")},
    **{w: {"triangle": 1.0} for w in ("triangle", "pyramid", "wedge", "delta", "peak")},
    **{w: {"diamond": 1.0} for w in ("diamond", "rhombus", "lozenge")},
    **{w: {"cross": 1.0} for w in ("cross", "plus", "crossroads", "crux")},
    **{w: {"ring": 1.0} for w in ("ring", "hoop", "halo", "loop", "donut")},
    **{w: {"star": 1.0} for w in ("star", "starlight", "pentagram", "asterisk")},
    **{w: {"crescent": 1.0} for w in ("crescent", "sickle", "half-moon")},
    # ambiguous
    "gem": {"diamond": 0.6, "star": 0.4},
    "sun": {"circle": 0.5, "star": 0.5},
    "moon": {"crescent": 0.7, "circle": 0.3},
    "wheel": {"ring": 0.6, "circle": 0.4},
    "kite": {"diamond": 0.6, "triangle": 0.4},
}
PALETTE_WORDS: dict[str, dict[str, float]] = {
    **{w: {"red": 1.0} for w in ("red", "crimson", "scarlet", "ruby", "cherry")},
    **{w: {"orange": 1.0} for w in ("orange", "amber", "tangerine", "copper")},
    **{w: {"yellow": 1.0} for w in ("yellow", "golden", "lemon", "saffron")},
    **{w: {"green": 1.0} for w in ("green", "emerald", "jade", "forest")},
    **{w: {"teal": 1.0} for w in ("teal", "turquoise", "cyan", "aqua")},
    **{w: {"blue": 1.0} for w in ("blue", "azure", "cobalt", "sapphire", "navy")},
    **{w: {"purple": 1.0} for w in ("purple", "violet", "amethyst", "lavender", "plum")},
    **{w: {"pink": 1.0} for w in ("pink", "magenta", "fuchsia", "blush")},
    # ambiguous
    "rose": {"pink": 0.6, "red": 0.4},
    "ocean": {"blue": 0.5, "teal": 0.5},
    "sunset": {"orange": 0.6, "red": 0.2, "pink": 0.2},
    "lime": {"green": 0.6, "yellow": 0.4},
    "wine": {"red": 0.5, "purple": 0.5},
}
ADJECTIVES = (
    "lost", "silent", "last", "hidden", "little", "wild", "broken", "endless", "secret",
    "quiet", "electric", "ancient", "brave", "distant", "restless", "curious", "gentle",
)  # fmt: skip
NOUNS = (
    "tales", "stories", "journey", "kingdom", "diaries", "chronicles", "podcast", "recipes",
    "guide", "collection", "mixtape", "sessions", "letters", "club", "notes", "season",
)  # fmt: skip
TEMPLATES = (
    "The {P} {M}",
    "{M} of {P} {N}",
    "A {D} {P} {M}",
    "{P} {M}: {D} {N}",
    "{N} of the {P} {M}",
    "The {D} {M} ({P})",
    "{P} {M} {N}",
    "My {D} {M}, {P} {N}",
    "{D} {N} under a {P} {M}",
    "{M} & {P}",
)
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)?")


def _words_for(lexicon: dict[str, dict[str, float]], value: str) -> tuple[list[str], np.ndarray]:
    words = [w for w, meaning in lexicon.items() if value in meaning]
    weights = np.array([lexicon[w][value] for w in words], dtype=np.float64)
    return words, weights / weights.sum()


def make_title(
    motif: int,
    palette: int,
    rng: np.random.Generator,
    typo_rate: float = 0.03,
    omit_palette_rate: float = 0.03,
) -> str:
    """Write a messy title whose meaning contains (motif, palette)."""
    m_words, m_w = _words_for(MOTIF_WORDS, MOTIFS[motif])
    p_words, p_w = _words_for(PALETTE_WORDS, PALETTES[palette])
    m = m_words[rng.choice(len(m_words), p=m_w)]
    p = p_words[rng.choice(len(p_words), p=p_w)]
    if rng.random() < omit_palette_rate:
        p = ""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    title = template.format(
        M=m, P=p, D=ADJECTIVES[rng.integers(len(ADJECTIVES))], N=NOUNS[rng.integers(len(NOUNS))]
    )
    title = re.sub(r"\s+", " ", title).replace("( )", "").replace("()", "").strip(" :,&")
    if rng.random() < typo_rate:  # swap two letters of one word
        words = title.split(" ")
        i = int(rng.integers(len(words)))
        w = words[i]
        if len(w) > 3:
            j = int(rng.integers(len(w) - 1))
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        title = " ".join(words)
    style = rng.random()
    if style < 0.05:
        title = title.upper()
    elif style < 0.15:
        title = title.lower()
    elif style < 0.5:
        title = title[0].upper() + title[1:]
    if rng.random() < 0.1:
        title += str(rng.choice(["!", "?", "...", " 2", " vol. 3", " (remastered)"]))
    return title


def title_meaning(title: str) -> tuple[np.ndarray, np.ndarray]:
    """The world's reading of a title: (motif probs (8,), palette probs (8,)).

    Unknown or misspelled words add nothing; with no content word the distribution is uniform.
    """
    motif = np.zeros(len(MOTIFS))
    palette = np.zeros(len(PALETTES))
    for token in _TOKEN.findall(title.lower()):
        for value, w in MOTIF_WORDS.get(token, {}).items():
            motif[MOTIFS.index(value)] += w
        for value, w in PALETTE_WORDS.get(token, {}).items():
            palette[PALETTES.index(value)] += w
    motif = motif / motif.sum() if motif.sum() > 0 else np.full(len(MOTIFS), 1 / len(MOTIFS))
    palette = (
        palette / palette.sum() if palette.sum() > 0 else np.full(len(PALETTES), 1 / len(PALETTES))
    )
    return motif, palette


def _likelihoods(lexicon: dict[str, dict[str, float]], values: tuple[str, ...]) -> dict:
    """word -> P(word | value) for every value, as `make_title` draws the word."""
    totals = np.array([sum(m.get(v, 0.0) for m in lexicon.values()) for v in values])
    return {w: np.array([m.get(v, 0.0) for v in values]) / totals for w, m in lexicon.items()}


_MOTIF_LIKELIHOOD = _likelihoods(MOTIF_WORDS, MOTIFS)
_PALETTE_LIKELIHOOD = _likelihoods(PALETTE_WORDS, PALETTES)


def title_ceiling(titles: list[str], motif: np.ndarray, palette: np.ndarray) -> tuple[float, float]:
    """The best motif and palette accuracy any reader of the title alone can expect.

    The Bayes reader of `make_title` (uniform content prior; a word the lexicon does not know,
    e.g. a typo, says nothing) picks the most probable motif and palette; where several tie, it
    is right 1/(number tied) of the time. Ambiguous words ("ocean", "sun") and titles that
    name no palette put this below 1: it bounds what a text-only prompt can draw correctly.

    Returns:
        (motif accuracy, palette accuracy), expected over ties.
    """

    def expected(likelihood: dict, n_values: int, truth: np.ndarray) -> float:
        hits = []
        for title, value in zip(titles, np.asarray(truth), strict=True):
            posterior = np.ones(n_values)
            for token in _TOKEN.findall(title.lower()):
                if token in likelihood:
                    posterior = posterior * likelihood[token]
            best = np.flatnonzero(np.isclose(posterior, posterior.max()))
            hits.append(float(value in best) / len(best))
        return float(np.mean(hits))

    return (
        expected(_MOTIF_LIKELIHOOD, len(MOTIFS), motif),
        expected(_PALETTE_LIKELIHOOD, len(PALETTES), palette),
    )
