"""Recipe of coverworld-tiny `aesthetic`: a LAION-shaped MLP on coverworld-tiny `clip` embeddings.

setup (frozen `clip`, zoo renders, simulated human ratings) → embed → MSE regression with
AdamW → save_pretrained → gate (Spearman vs the true aesthetic on fresh renders) → card.

The "human ratings" are CoverWorld's rating panel: the true aesthetic of each zoo render plus
Gaussian rater noise. Reading the truth here is the simulation of people rating covers, the one
place a recipe may touch it; gates read it as evaluation.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

from icg.config import DEFAULT_CLIP
from icg.io import atomic_path
from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.world.truth import true_aesthetic  # the simulated raters look at the truth
from icg.zoo import evaldata
from icg.zoo.aesthetic import AestheticMLP
from icg.zoo.recipes import _base
from icg.zoo.recipes.clip import image_embeds
from icg.zoo.registry import resolve

logger = logging.getLogger(__name__)

SEED_OFFSET = 1_000_000  # chunk c of the ratings set renders with zoo_seed(SEED_OFFSET + c)
THRESHOLDS = {"spearman": 0.80}
DATA_FILE = "ratings.safetensors"
DATA_DIR = "checkpoint-data"  # embeddings + ratings, kept beside the checkpoint until publish


class AestheticRecipeConfig(BaseModel):
    """Hyper-parameters of the `aesthetic` recipe (defaults are the shipped model's).

    Args:
        clip: the `clip` model whose image embeddings the MLP reads (frozen).
        n_train: rated renders.
        chunk: renders per chunk (one zoo seed and one defect rate each).
        defect_rates: defect rate of chunk c is ``defect_rates[c % len]``: more flawed covers
            than the platform's, so the low end of the scale is well covered.
        rating_noise: std of the simulated rater noise.
        hidden_sizes: widths of the MLP's hidden Linear layers.
        dropouts: dropout after each of the first hidden layers.
        activation: nonlinearity between the Linear layers.
        epochs: passes over the rated set.
        batch_size: examples per step.
        learning_rate: peak AdamW learning rate (cosine schedule, one epoch of warm-up).
        weight_decay: AdamW weight decay.
        gate_items: fresh renders the recipe measures its gate on.
    """

    model_config = ConfigDict(extra="forbid")

    clip: str = DEFAULT_CLIP
    n_train: int = Field(24_000, ge=1)
    chunk: int = Field(1_000, ge=1)
    defect_rates: tuple[float, ...] = (0.25, 0.5)
    rating_noise: float = Field(0.05, ge=0)
    hidden_sizes: tuple[int, ...] = (256, 64, 32, 16)
    dropouts: tuple[float, ...] = (0.1, 0.1, 0.05)
    activation: str = "gelu"
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    gate_items: int = Field(1000, ge=1)


def human_ratings(images: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Simulated panel ratings (N,): true aesthetic + Gaussian rater noise."""

    return true_aesthetic(images) + rng.normal(0.0, noise, len(images))


@torch.no_grad()
def clip_image_embeds(
    clip_path: str | Path, images: np.ndarray, batch_size: int = 256
) -> torch.Tensor:
    """L2-normalised image embeddings (N, P) of the `clip` model at `clip_path`."""

    model = CLIPModel.from_pretrained(str(clip_path)).eval()
    out = [
        image_embeds(model, _base.images_to_tensor(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def build_dataset(cfg: AestheticRecipeConfig, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, P) and ratings (N,) of the zoo renders, cached in `folder`."""
    file = folder / DATA_FILE
    if file.exists():
        data = load_file(str(file))
        return data["embeds"], data["ratings"]
    clip_path = resolve(cfg.clip)
    embeds, ratings = [], []
    n_chunks = cfg.n_train // cfg.chunk
    bar = _base.progress(n_chunks, 0, "aesthetic data")
    for c in range(n_chunks):
        rate = cfg.defect_rates[c % len(cfg.defect_rates)]
        s = sample_covers(cfg.chunk, seed=zoo_seed(SEED_OFFSET + c), defect_rate=rate)
        rng = np.random.default_rng(zoo_seed(SEED_OFFSET + c))
        ratings.append(torch.from_numpy(human_ratings(s.images, cfg.rating_noise, rng)).float())
        embeds.append(clip_image_embeds(clip_path, s.images))
        bar.update(1)
    bar.close()
    e, r = torch.cat(embeds), torch.cat(ratings)
    with atomic_path(file) as tmp:
        save_file({"embeds": e.contiguous(), "ratings": r.contiguous()}, str(tmp))
    return e, r


def measure(
    path: str | Path, clip_path: str | Path, gate_set: evaldata.GateSet
) -> dict[str, float]:
    """Spearman and Pearson correlation of the model's scores with the true aesthetic."""
    # import cost: scipy.stats is only needed by this gate
    from scipy.stats import pearsonr, spearmanr

    model = AestheticMLP.from_pretrained(str(path)).eval()
    with torch.no_grad():
        scores = model(clip_image_embeds(clip_path, gate_set.images)).squeeze(-1).numpy()
    truth = true_aesthetic(gate_set.images)
    return {
        "spearman": float(spearmanr(scores, truth).statistic),
        "pearson": float(pearsonr(scores, truth).statistic),
        "mae": float(np.abs(scores - truth).mean()),
        "n": float(len(truth)),
    }


def evaluate(
    path: str | Path, world_dir: str | Path | None, clip: str = DEFAULT_CLIP
) -> dict[str, float]:
    """Gate metrics on the covers of a CoverWorld folder (fresh renders when None)."""
    gate_set = (
        evaldata.fresh_covers(1000) if world_dir is None else evaldata.world_covers(Path(world_dir))
    )
    return measure(path, resolve(clip), gate_set)


def train(
    out: Path, *, resume: bool, seed: int, config: AestheticRecipeConfig | None = None
) -> None:
    """Train coverworld-tiny `aesthetic` into `out` (config.json + safetensors + card + gates)."""
    cfg = config or AestheticRecipeConfig()
    out = Path(out)
    _base.setup_torch(seed)
    timer = _base.Timer()
    model = AestheticMLP(
        input_size=_clip_projection_dim(resolve(cfg.clip)),
        hidden_sizes=cfg.hidden_sizes,
        dropouts=cfg.dropouts,
        activation=cfg.activation,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    state = (_base.resume_progress(out, model, optimizer) if resume else None) or _base.Progress()
    timer.before = state.elapsed_s
    embeds, ratings = build_dataset(cfg, out / DATA_DIR)
    n = len(ratings)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    model.train()
    bar = _base.progress(total, state.step, "aesthetic")
    while state.step < total:
        epoch = state.step // steps_per_epoch
        order = torch.from_numpy(np.random.default_rng(seed + epoch).permutation(n))
        k = state.step % steps_per_epoch
        idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = _base.cosine_lr(state.step, total, cfg.learning_rate, steps_per_epoch)
        loss = F.mse_loss(model(embeds[idx]).squeeze(-1), ratings[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.step += 1
        bar.update(1)
        if state.step % steps_per_epoch == 0:
            state.history.append((state.step, float(loss.item())))
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            state.elapsed_s = timer.total()
            _base.save_progress(out, model, optimizer, state)
            model.train()
    bar.close()
    _publish(out, model, cfg, timer.total())


def _clip_projection_dim(clip_path: str) -> int:

    return int(CLIPConfig.from_pretrained(clip_path).projection_dim)


def _publish(out: Path, model: AestheticMLP, cfg: AestheticRecipeConfig, train_s: float) -> None:
    """Save the final folder atomically, measure the gate on fresh renders, write the card."""
    model.eval()
    done = _base.publish_with_gates(
        out,
        "aesthetic",
        model,
        lambda folder: model.save_pretrained(str(folder)),
        lambda folder, covers: measure(folder, resolve(cfg.clip), covers),
        cfg.gate_items,
        THRESHOLDS,
        train_s,
    )
    shutil.rmtree(out / DATA_DIR, ignore_errors=True)
    metrics, params, wall = done.metrics, done.parameters, done.wall_time_s
    _base.write_card(
        out,
        name="aesthetic",
        summary=(
            "An aesthetic predictor laid out like LAION's improved aesthetic predictor "
            "(`layers` = Linear/Dropout Sequential, final Linear to 1) over L2-normalised "
            "coverworld-tiny `clip` image embeddings (64-d), with GELU between the Linear "
            "layers (functional, so the keys match LAION's `layers.0` … `layers.7`). Scores are on "
            "CoverWorld's aesthetic scale (about 0 to 1)."
        ),
        loading="""
import torch
from safetensors.torch import load_file

from icg.zoo.aesthetic import AestheticMLP  # diffusers ModelMixin/ConfigMixin

model = AestheticMLP.from_pretrained(path)
score = model(embeds)  # L2-normalised `clip` image embeddings (N, 64) -> (N, 1)

# without icg: plain safetensors; Linear layers are layers.0, .2, .4, .6, .7 (odd = Dropout)
w = load_file(f"{path}/diffusion_pytorch_model.safetensors")
x = embeds
for i in (0, 2, 4, 6, 7):
    x = x @ w[f"layers.{i}.weight"].T + w[f"layers.{i}.bias"]
    x = torch.nn.functional.gelu(x) if i != 7 else x
""",
        data=(
            f"{cfg.n_train} renders from `sample_covers(seed=zoo_seed(k))`, "
            f"k = {SEED_OFFSET}..{SEED_OFFSET + cfg.n_train // cfg.chunk - 1}, defect rate "
            f"alternating {cfg.defect_rates} per chunk of {cfg.chunk}; ratings = true aesthetic "
            f"+ N(0, {cfg.rating_noise}²) rater noise (CoverWorld's simulated rating panel)."
        ),
        recipe=f"MSE regression, AdamW, cosine schedule, {cfg.epochs} epochs, frozen `clip`",
        config=cfg.model_dump(),
        parameters=params,
        gates=metrics,
        thresholds=THRESHOLDS,
        gate_data=f"{done.gate_source}; Spearman of scores vs `icg.world.truth.true_aesthetic`",
        wall_time_s=wall,
    )
    logger.info("aesthetic gates: %s", metrics)
