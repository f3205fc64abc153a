"""A recipe file and the matrix it runs in: what a recipe may change, validated before any work.

A recipe is a YAML file of overrides of the demo's training and evaluation settings
(`icg.demo.FULL`), one section per stage::

    name: shipped-lr3e-4
    description: stage B at a lower learning rate
    preference: {}            # PreferenceConfig fields
    align: {user_words: 4}    # AlignConfig fields (stage A)
    reward: {learning_rate: 3.0e-4, trainer: ranked}   # RewardConfig fields; null: stage A alone
    sampling: {guidance_scale: 3.0}                    # stage-B sampling and the evaluation

The matrix sets the fields that tie a run to its cell (data, output folders, seeds, the shared
preference model); a recipe that names one of them, or a field its config does not have, is
refused with the file and the field.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from icg.config import read_yaml_mapping
from icg.demo import FULL
from icg.training.align import AlignConfig
from icg.training.preference import PreferenceConfig
from icg.training.reward_config import DEFAULT_REWARDS, RewardConfig

# fields each stage gets from the matrix (its cell), never from a recipe
RESERVED = {
    "preference": {"seed"},
    "align": {"data", "out", "seed", "preference"},
    "reward": {"data", "init", "out", "seed", "preference"},
}
# stage-B sampling fields that live in the recipe's `sampling` section (shared with evaluation)
SAMPLING_FIELDS = ("num_inference_steps", "guidance_scale", "strength", "user_guidance")


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the field."""


class Sampling(BaseModel):
    """How covers are drawn in stage B and in the evaluation (the demo's defaults)."""

    model_config = ConfigDict(extra="forbid")

    num_inference_steps: int = Field(FULL.num_inference_steps, ge=1)
    guidance_scale: float = Field(FULL.guidance_scale, ge=1.0)
    strength: float = Field(FULL.strength, gt=0, le=1)
    user_guidance: float = Field(FULL.user_guidance, ge=0)


class Recipe(BaseModel):
    """One recipe: overrides of the demo's settings per stage.

    Args:
        name: the recipe's name in the table (letters, digits, ``._-``).
        description: one line for the table.
        preference: `PreferenceConfig` overrides (a recipe that changes none shares the
            preference model of its (world, training seed) with every such recipe).
        align: `AlignConfig` overrides (stage A).
        reward: `RewardConfig` overrides (stage B), or ``None`` for stage A alone.
        sampling: stage-B sampling and the evaluation's draws.
        calibration_steps: stage A alone: batches of stage A's own draws that set the
            statistics of the best-of-K reward (a stage-B run learns them while it trains).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    preference: dict[str, Any] = Field(default_factory=dict)
    align: dict[str, Any] = Field(default_factory=dict)
    reward: dict[str, Any] | None = Field(default_factory=dict)
    sampling: Sampling = Field(default_factory=Sampling)
    calibration_steps: int = Field(16, ge=1)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ValueError(f"expected letters, digits and ._- (at most 64), got {name!r}")
        return name

    # -- the configs a cell trains with ---------------------------------------------------
    def preference_config(self, seed: int) -> dict[str, Any]:
        """`PreferenceConfig` fields of this recipe for training seed ``seed``."""
        return {**self.preference, "seed": seed}

    def align_config(self, seed: int) -> dict[str, Any]:
        """`AlignConfig` fields without the paths: the demo's stage A with the overrides."""
        return {"max_steps": FULL.align_steps, **self.align, "seed": seed}

    def reward_config(self, seed: int) -> dict[str, Any]:
        """`RewardConfig` fields without the paths: the demo's stage B with the overrides (stage A
        alone: the reward best-of-K ranks with, its statistics from ``calibration_steps``)."""
        base = {
            "rewards": dict(FULL.rewards.get("icg", DEFAULT_REWARDS)),
            "max_steps": FULL.reward_steps,
            "batch_size": FULL.reward_batch,
            "learning_rate": FULL.reward_lr,
            "drift_token_weight": FULL.drift_token_weight,
            **self.sampling.model_dump(),
        }
        if self.reward is None:
            return {**base, "max_steps": self.calibration_steps, "seed": seed}
        return {**base, **self.reward, "seed": seed}

    @property
    def trains_stage_b(self) -> bool:
        """Whether the recipe trains stage B (``reward: null`` evaluates stage A alone)."""
        return self.reward is not None


def _problems(err: ValidationError, section: str | None = None) -> str:
    """Pydantic errors as ``section.field: message (got value)``, joined by ``; ``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in ((section,) if section else ()) + tuple(e["loc"]))
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        parts.append(f"{loc or section or 'recipe'}: {e['msg']}{got}")
    return "; ".join(parts)


def check_recipe(recipe: Recipe, source: str | Path) -> Recipe:
    """Validate every section against the config class it overrides, with placeholder paths for
    the fields the matrix sets. Raises `RecipeError` naming ``source`` and the field."""
    sections = {"preference": recipe.preference, "align": recipe.align}
    sections["reward"] = recipe.reward or {}
    for section, values in sections.items():
        reserved = sorted(RESERVED[section] & set(values))
        if reserved:
            raise RecipeError(
                f"{source}: {section}.{reserved[0]}: set by the matrix for each cell, not by a "
                f"recipe (reserved: {sorted(RESERVED[section])})"
            )
    sampled = sorted(set(SAMPLING_FIELDS) & set(sections["reward"]))
    if sampled:
        raise RecipeError(
            f"{source}: reward.{sampled[0]}: set it in the recipe's `sampling` section (stage B "
            "and the evaluation draw alike)"
        )
    # the placeholders only have to look like their kind: nothing is read before a cell runs
    with tempfile.TemporaryDirectory(prefix="icg-recipe-") as tmp:
        here = Path(tmp)
        (here / "preference").mkdir()
        (here / "preference" / "config.json").write_text("{}")
        paths = {"data": here, "out": here / "out", "preference": here / "preference"}
        checks = (
            ("preference", PreferenceConfig, recipe.preference_config(0)),
            ("align", AlignConfig, {**recipe.align_config(0), **paths}),
            ("reward", RewardConfig, {**recipe.reward_config(0), **paths, "init": here}),
        )
        for section, cls, values in checks:
            try:
                cls(**values)
            except ValidationError as err:
                raise RecipeError(f"{source}: {_problems(err, section)}") from err
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file.

    Raises:
        RecipeError: the file is missing, not a YAML mapping, or a field is unknown or invalid
            (the message names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        values = read_yaml_mapping(path)
    except Exception as err:  # a YAML syntax error or a non-mapping: name the file
        raise RecipeError(f"{path}: not a YAML mapping of recipe fields ({err})") from err
    values.setdefault("name", path.stem)
    try:
        recipe = Recipe(**values)
    except ValidationError as err:
        raise RecipeError(f"{path}: {_problems(err)}") from err
    return check_recipe(recipe, path)
