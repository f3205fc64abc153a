"""What `icg evaluate` reads from a run folder and a data folder besides the methods' covers:
training curves and configs for the report, the model-side scorers, CoverWorld's truth."""

from __future__ import annotations

from pathlib import Path

from icg.config import read_yaml_mapping
from icg.evaluation.methods import ICG_METHODS
from icg.evaluation.preference_eval import has_truth
from icg.generation import Scorer, reward_scorer
from icg.layout import (
    ALIGN_RUN,
    PREFERENCE_CONFIG_FILE,
    PREFERENCE_RUN,
    RUN_CONFIG_FILE,
    TRAIN_CONFIG_FILE,
    WORLD_CONFIG_FILE,
)
from icg.rewards import AestheticReward, PreferenceReward
from icg.training.curves import CURVES_FILE, read_curves
from icg.world.truth import Truth

__all__ = ["load_truth", "model_scorers", "report_curves", "run_configs"]


def report_curves(run: Path) -> dict[str, list[dict]]:
    """Stage-B curves of every run under ``run``: rewards per step and the truth probe (flat)."""
    curves = {}
    for file in sorted(run.glob(f"*/{CURVES_FILE}")):
        rows = []
        for row in read_curves(file):
            flat = {"step": row["step"]} | dict(row.get("probe", {}))
            flat |= {
                k: v
                for k, v in row.items()
                if k.startswith("reward/") and not k.endswith(("_normalised", "_cosine"))
            }
            rows.append(flat)
        curves[file.parent.name] = rows
    return curves


def run_configs(data_dir: Path, run: Path) -> dict[str, dict]:
    """The world's and every stage's config for the report (``config.yaml`` wins over
    ``train_config.yaml`` where a stage has both)."""
    world = data_dir / WORLD_CONFIG_FILE
    configs = {"world": read_yaml_mapping(world) if world.is_file() else {}}
    for sub in (
        PREFERENCE_RUN,
        ALIGN_RUN,
        *dict.fromkeys(spec.run for spec in ICG_METHODS.values()),
    ):
        for name in (TRAIN_CONFIG_FILE, RUN_CONFIG_FILE):
            if (run / sub / name).is_file():
                configs[sub] = read_yaml_mapping(run / sub / name)
    return configs


def model_scorers(run: Path, data, towers, aesthetic: str) -> dict[str, Scorer]:
    """The model-side scorers: the aesthetic predictor, and the run's preference model when it
    has one (its click probability)."""

    scorers = {"aesthetic_reward": reward_scorer(AestheticReward(towers, aesthetic), data)}
    if (run / PREFERENCE_RUN / PREFERENCE_CONFIG_FILE).is_file():
        preference = PreferenceReward(str(run / PREFERENCE_RUN), towers)
        scorers["preference_score"] = reward_scorer(preference, data, "preference_probability")
    return scorers


def load_truth(data_dir: Path):
    """CoverWorld's hidden truth of ``data_dir`` (evaluation only), or ``None`` on other data."""

    if not has_truth(data_dir):
        return None

    return Truth(data_dir)
