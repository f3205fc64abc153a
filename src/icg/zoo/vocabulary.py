"""coverworld-tiny's style vocabulary: the words its `clip` and `sd` were trained with.

A `icg.models.user_prompt.UserPrompt` writes a user's taste in these words. For a real base
model, bring a vocabulary of your own in the same JSON shape
(``{"group": {"phrase in the prompt": "text CLIP tags covers with", ...}, ...}``).
"""

from __future__ import annotations

from icg.world.attributes import STYLE_LEVELS
from icg.zoo.recipes.clip.texts import style_phrase

ADJECTIVE_GROUPS = ("brightness", "saturation", "scale")  # "a dark cover"; others "a cover, ..."


def coverworld_style_vocabulary() -> dict[str, dict[str, str]]:
    """Group -> {phrase: CLIP text} for every CoverWorld style dimension."""
    vocab: dict[str, dict[str, str]] = {}
    for group, levels in STYLE_LEVELS.items():
        phrases = [style_phrase(group, level) for level in range(len(levels))]
        form = "a {} cover" if group in ADJECTIVE_GROUPS else "a cover, {}"
        vocab[group] = {p: form.format(p) for p in phrases}
    return vocab
