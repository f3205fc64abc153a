"""Does a stage-A model use the user? Its denoising loss on its own training rows, per noise band.

For training rows of a stage-A run (the last checkpoint), the loss is computed three times with
the same noise and timesteps: with the row's user, with another row's user, and with no user.
A model that learned the user's taste fits its own rows better with the right user than with
another or none. Needs no truth: only the run, its data and its preference model.

Where the gap appears says where the user can act: the first sampling steps (the top of the
noise range) fix layout, brightness and frame, and below them the noisy latent already shows them.

    python benchmarks/user_signal.py --align RUN/align [--rows 768] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from icg.models.attention import ICG_TOKENS_KWARG
from icg.training.align import AlignConfig, AlignRecipe
from icg.training.common import batch_indices, diffusion_target, step_generator, without_users

BANDS = [(0.0, 0.5), (0.5, 0.9), (0.9, 1.0)]
"""Timestep bands as fractions of the schedule; each gets its own rows."""


@torch.no_grad()
def row_losses(
    recipe: AlignRecipe, band: tuple[float, float], rows: int, batch: int = 32, seed: int = 0
) -> dict:
    """Per-row losses ``{"user", "other_user", "no_user"}`` of ``rows`` training rows with
    timesteps drawn uniformly in ``band`` (fractions of the schedule)."""
    data, model, unet = recipe.data, recipe.icg, recipe.unet
    scheduler, device = recipe.noise_scheduler, recipe.accelerator.device
    total = scheduler.config.num_train_timesteps
    low, high = int(band[0] * total), max(int(band[0] * total) + 1, int(band[1] * total))
    out: dict[str, list[torch.Tensor]] = {"user": [], "other_user": [], "no_user": []}
    for b in range(max(1, rows // batch)):
        idx = batch_indices(len(data.item_ids), batch, b, seed)
        gen = step_generator(seed + 1, b)
        items = [data.item_ids[i] for i in idx]
        feats = model.encoder([data.titles[i] for i in items], [data.images[i] for i in items])
        latents = data.latents[idx].to(device)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(low, high, (len(idx),), generator=gen).to(device)
        users = torch.stack([data.user_vectors[data.user_ids[i]] for i in idx]).to(device)
        other = users[torch.roll(torch.arange(len(idx)), 1)]
        none = without_users(users, torch.ones(len(idx), dtype=torch.bool))
        text = torch.stack([data.text_states[data.titles[i]] for i in items]).to(device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = diffusion_target(scheduler, latents, noise, t)
        for key, rows_users in (("user", users), ("other_user", other), ("no_user", none)):
            tokens = model(feats, rows_users)
            extra = {ICG_TOKENS_KWARG: tokens.to(unet.dtype)}
            pred = unet(noisy, t, text, cross_attention_kwargs=extra).sample
            out[key].append(((pred.float() - target.float()) ** 2).mean((1, 2, 3)).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def summarise(band: tuple[float, float], losses: dict) -> dict:
    """Mean losses of one band and the gaps ``other_user - user`` and ``no_user - user`` with
    their standard errors (paired over rows)."""
    result: dict = {"band": list(band), "rows": len(losses["user"])}
    result |= {k: float(v.mean()) for k, v in losses.items()}
    for key in ("other_user", "no_user"):
        gap = losses[key] - losses["user"]
        result[f"{key}_minus_user"] = float(gap.mean())
        result[f"{key}_minus_user_se"] = float(gap.std() / len(gap) ** 0.5)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--align", type=Path, required=True, help="a stage-A run folder")
    parser.add_argument("--rows", type=int, default=256, help="training rows per band")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    saved = yaml.safe_load((args.align / "config.yaml").read_text())
    fields = AlignConfig.model_fields
    config = AlignConfig(**{k: v for k, v in saved.items() if k in fields} | {"out": args.align})
    recipe = AlignRecipe(config)
    recipe.setup(resume=True)
    try:
        bands = [summarise(band, row_losses(recipe, band, args.rows)) for band in BANDS]
    finally:
        recipe.cleanup()
    for b in bands:
        lo, hi = b["band"]
        print(
            f"t in [{lo:.1f}, {hi:.1f}) rows {b['rows']:4d}  loss with the user {b['user']:.4f}  "
            f"another user {b['other_user_minus_user']:+.4f} (se {b['other_user_minus_user_se']:.4f})"
            f"  no user {b['no_user_minus_user']:+.4f} (se {b['no_user_minus_user_se']:.4f})"
        )
    if args.json:
        args.json.write_text(json.dumps({"align": str(args.align), "bands": bands}, indent=2))


if __name__ == "__main__":
    main()
