"""The method table of `icg evaluate`: which methods exist, what each needs and how it draws.

    reference, oracle          no model (oracle: CoverWorld's truth only)
    variant-select             the run's preference model picks among the item's shown covers
    vae-roundtrip              the item's own cover through the base model's VAE: the fidelity
                               ceiling of anything the base model draws
    prompt, mllm-prompt        the base model alone (mllm-prompt: the MLLM writes the prompt)
    icg, icg-*                 an ICG adapter of the run folder (`ICG_METHODS`)

A method is evaluated when its inputs exist in the run folder (or when it is asked for, and then
a missing input is an error). Every method becomes a `CoverSource` ``pairs -> uint8 (N, H, W, 3)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from icg.evaluation import baselines
from icg.evaluation.baselines import CoverSource
from icg.generation import Scorer, reward_scorer
from icg.layout import ADAPTER_DIR, ICG_CONFIG_FILE, PREFERENCE_CONFIG_FILE, PREFERENCE_RUN
from icg.models.backbones import denoiser_of
from icg.models.base_pipeline import load_base
from icg.models.denoiser_lora import find_lora
from icg.models.icg_model import ICGModel
from icg.models.mllm import load_mllm
from icg.models.paths import resolve_model_path
from icg.models.preference import PreferenceModel
from icg.pipeline import ICGPipeline
from icg.rewards import ClipTowers, PreferenceReward
from icg.rewards.factory import load_run_reward

if TYPE_CHECKING:
    from icg.evaluation.run import EvalConfig

METHODS = (
    "reference",
    "variant-select",
    "vae-roundtrip",
    "prompt",
    "mllm-prompt",
    "icg-nouser",
    "icg-nouser-single",
    "icg-aesthetic",
    "icg-relevance",
    "icg-preference",
    "icg-single",
    "icg",
    "oracle",
)
PROMPT_METHODS = ("prompt", "mllm-prompt")
BASE_METHODS = ("vae-roundtrip", *PROMPT_METHODS)  # need the base model, not an adapter


class IcgMethod(NamedTuple):
    """An ICG method: the run subfolder with its adapter, whether it sees the user, and whether
    it keeps the best of K draws under that run's own reward.

    The single-reward ablations draw once: what they show, the reward hacking that combining the
    rewards prevents, is what their training taught the generator, and selecting among draws
    under the same hacked reward would only add to it."""

    run: str
    personalize: bool
    best_of_k: bool


ICG_METHODS = {
    "icg": IcgMethod("icg", True, True),
    "icg-single": IcgMethod("icg", True, False),
    "icg-nouser": IcgMethod("icg", False, True),
    "icg-nouser-single": IcgMethod("icg", False, False),
    "icg-aesthetic": IcgMethod("icg-aesthetic", True, False),
    "icg-relevance": IcgMethod("icg-relevance", True, False),
    "icg-preference": IcgMethod("icg-preference", True, False),
}


def adapter_folder(run: Path, name: str) -> Path | None:
    """``RUN/<name>/adapter`` (or ``RUN/<name>``) when it holds an ICG adapter."""
    for folder in (run / name / ADAPTER_DIR, run / name):
        if (folder / ICG_CONFIG_FILE).is_file():
            return folder
    return None


def main_adapter(adapters: dict[str, Path]) -> Path | None:
    """The adapter whose recorded base model and MLLM every generated method shares: ``icg``'s,
    else the first found."""
    return adapters.get("icg") or next(iter(adapters.values()), None)


def select_methods(
    run: Path,
    requested: list[str] | None,
    *,
    truth: bool,
    base: str | None,
    variants: bool = True,
) -> tuple[list[str], dict[str, Path]]:
    """The methods to evaluate (in `METHODS` order) and the adapter folder of every ICG method
    found (wanted or not: `main_adapter` looks at all of them).

    Args:
        run: the run folder (``icg/``, ``icg-aesthetic/``, ...).
        requested: methods asked for; ``None`` (or empty): every method whose inputs exist.
        truth: whether the data has CoverWorld's truth (``oracle``).
        base: a base model given explicitly (the prompt baselines need no adapter then).
        variants: whether the data has a click log (``variant-select`` picks among the covers
            it shows, with the run's ``preference/`` model).

    Raises:
        FileNotFoundError: a requested method's inputs are missing.
    """
    adapters = {m: f for m, spec in ICG_METHODS.items() if (f := adapter_folder(run, spec.run))}
    available = {"reference"} | ({"oracle"} if truth else set()) | set(adapters)
    if main_adapter(adapters) is not None or base:
        available |= set(BASE_METHODS)
    if variants and (run / PREFERENCE_RUN / PREFERENCE_CONFIG_FILE).is_file():
        available.add("variant-select")
    wanted = [m for m in METHODS if m in (requested or available)]
    missing = sorted(set(wanted) - available)
    if missing:
        raise FileNotFoundError(
            f"run={run}: no inputs for methods {missing} (expected adapters under "
            f"{run}/<icg|icg-aesthetic|...>/adapter, truth/ for oracle, {run}/preference and "
            "a click log for variant-select)"
        )
    return wanted, adapters


class RunScorers:
    """Each run's own reward as a `Scorer`, loaded on first use and once per run folder (``icg``
    and ``icg-nouser`` share one); ``clips`` shares CLIP towers with the evaluation."""

    def __init__(self, run: Path, data, clips: dict) -> None:
        self.run, self.data, self.clips = run, data, clips
        self._scorers: dict[str, Scorer] = {}
        self._preference: Scorer | None = None

    def __call__(self, sub: str) -> Scorer:

        if sub not in self._scorers:
            reward = load_run_reward(self.run / sub, self.clips)
            self._scorers[sub] = reward_scorer(reward, self.data)
        return self._scorers[sub]

    def preference(self) -> Scorer:
        """The run's preference model (``RUN/preference``) on the CLIP it records: each cover's
        P(click | examined) for its user (users without history: no learned user vector)."""
        if self._preference is None:
            model = PreferenceModel.from_pretrained(str(self.run / PREFERENCE_RUN))
            name = model.config.clip_name_or_path
            if name is not None and name not in self.clips:
                self.clips[name] = ClipTowers.from_pretrained(name)
            reward = PreferenceReward(model, self.clips.get(name))  # no CLIP recorded: raises
            self._preference = reward_scorer(reward, self.data, "preference_probability")
        return self._preference


@dataclass
class Drawers:
    """What the methods draw with, loaded once per evaluation and shared by every method.

    Args:
        data: the `PlatformData`.
        covers: folder of the generated PNGs and their ``manifest.parquet``.
        size: cover side in pixels (the base model's output size, else 64).
        base: the diffusers base pipeline (``None`` when no method generates).
        mllm, processor: the MLLM of the ICG encoder and the ``mllm-prompt`` writer.
        truth: CoverWorld's `Truth` (``oracle``), or ``None``.
        adapters: ICG method → adapter folder.
        run_scorers: each run's own reward (best-of-K).
    """

    data: Any
    covers: Path
    size: int
    base: Any = None
    mllm: Any = None
    processor: Any = None
    truth: Any = None
    adapters: dict[str, Path] = field(default_factory=dict)
    run_scorers: RunScorers | None = None


def load_generators(
    wanted: list[str], base: str | None, mllm: str | None
) -> tuple[Any, Any, Any, int]:
    """The base pipeline and the MLLM (with its processor), each only when a wanted method
    draws with it, and the cover size: ``(base_pipe, mllm, processor, size)``."""

    needs_base = any(m in ICG_METHODS or m in BASE_METHODS for m in wanted)
    pipe = load_base(base) if needs_base else None
    needs_mllm = any(m in ICG_METHODS or m == "mllm-prompt" for m in wanted)
    model, processor = load_mllm(resolve_model_path(mllm)) if needs_mllm else (None, None)
    size = int(sample_size(pipe) * pipe.vae_scale_factor) if pipe else 64
    return pipe, model, processor, size


def sample_size(pipe) -> int:
    """The base pipeline's default latent size (UNet ``sample_size``; SD3 / FLUX pipelines
    record theirs as ``default_sample_size``)."""
    recorded = getattr(pipe, "default_sample_size", None)
    return int(recorded or denoiser_of(pipe).config.sample_size)


@dataclass
class IcgSource:
    """An ICG method's covers: its adapter installed on the shared base for the call, best-of-K
    under its run's own reward (``*-single``: one draw). Every ICG method draws per pair on the
    pair's seeds (``share=False``), so ``icg`` and ``icg-nouser`` differ only by the user, and a
    ``*-single`` method is its best-of-K method's first draw.

    ``folder`` renames the covers' folder and manifest method; ``embedding_users`` draws a pair
    user's covers with another user's embedding on the pair user's seeds (`SwapControl`)."""

    method: str
    drawers: Drawers
    config: EvalConfig
    folder: str | None = None
    embedding_users: dict[str, str] | None = None

    def __call__(self, pairs: pd.DataFrame) -> np.ndarray:

        d, cfg, spec = self.drawers, self.config, ICG_METHODS[self.method]
        folder = d.adapters[self.method]
        model = ICGModel.from_pretrained(folder, d.mllm, d.processor)
        pipe = ICGPipeline(d.base, model, lora=find_lora(folder))  # the run's LoRA, if any
        try:
            k = cfg.candidates if spec.best_of_k else 1
            draw = baselines.generated_source(
                pipe, d.data, d.covers, self.folder or self.method, personalize=spec.personalize,
                size=d.size, guidance_scale=cfg.guidance_scale, strength=cfg.strength,
                candidates=k, scorer=d.run_scorers(spec.run) if k > 1 else None, share=False,
                num_inference_steps=cfg.num_inference_steps, seed=cfg.seed,
                user_guidance=cfg.user_guidance, embedding_users=self.embedding_users,
            )  # fmt: skip
            return draw(pairs)
        finally:
            pipe.remove_adapter()


def swap_draw(drawers: Drawers, config: EvalConfig):
    """`icg-single`'s draw as a `SwapDraw` for `SwapControl`: ``(pairs, partners) -> covers``,
    into ``covers/icg-swap`` (``covers/icg-swap-own`` with no partners)."""

    def draw(pairs: pd.DataFrame, partners: dict[str, str]) -> np.ndarray:
        folder = "icg-swap" if partners else "icg-swap-own"
        return IcgSource("icg-single", drawers, config, folder, partners or None)(pairs)

    return draw


def prompt_source(method: str, drawers: Drawers, config: EvalConfig) -> CoverSource:
    """``prompt`` (the title in a template) or ``mllm-prompt`` (the MLLM's text in it): the base
    model alone, one cover per item, at the base pipeline's own guidance."""
    d = drawers
    writer = baselines.MllmPromptWriter(d.mllm, d.processor) if method == "mllm-prompt" else None
    return baselines.generated_source(
        baselines.PromptDrawer(d.base, writer=writer), d.data, d.covers, method,
        personalize=False, size=d.size, guidance_scale=config.prompt_guidance_scale,
        num_inference_steps=config.num_inference_steps, seed=config.seed,
    )  # fmt: skip


def method_source(method: str, drawers: Drawers, config: EvalConfig) -> CoverSource:
    """The `CoverSource` of one method of `METHODS`."""
    if method == "reference":
        return baselines.reference_source(drawers.data, drawers.size)
    if method == "oracle":
        return baselines.oracle_source(drawers.truth)
    if method == "vae-roundtrip":
        return baselines.vae_roundtrip_source(drawers.data, drawers.base.vae, drawers.size)
    if method in PROMPT_METHODS:
        return prompt_source(method, drawers, config)
    if method == "variant-select":
        if drawers.data.impressions is None or drawers.run_scorers is None:
            raise ValueError("variant-select: needs a click log and the run's preference model")
        scorer = drawers.run_scorers.preference()
        return baselines.variant_select_source(drawers.data, scorer, drawers.size)
    return IcgSource(method, drawers, config)
