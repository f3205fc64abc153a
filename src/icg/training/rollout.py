"""Stage B's rollouts: covers sampled for (user, item) pairs of the logs, with DRaFT gradients.

`Rollout` is the sampling half of `icg.training.reward.RewardRecipe`: the (user, item) pool and
its encodings, the seeded draws of a step, the ICG tokens of pairs (also under the stage-A
reference parameters) and the truncated sampling chain (`icg.training.draft`). The recipe's
``setup`` sets what it reads: ``config``, ``accelerator``, ``unet``, ``vae``, ``scheduler``,
``train_scheduler``, ``model`` and the base pipeline's tokenizer and text encoder (``_base``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from icg.training.common import (
    clicked_examples,
    denoising_loss,
    encode_images,
    encode_prompt,
    step_generator,
    vae_scale_factor,
)
from icg.training.draft import decode, denoise, sample_truncation, start_step, truncated_steps

logger = logging.getLogger(__name__)


class Rollout:
    """Sampling for stage B, mixed into `RewardRecipe` (see the module docstring)."""

    @property
    def icg(self):
        """The ICG model being trained."""
        return self.model

    @torch.no_grad()
    def _prepare_data(self, data) -> None:
        """The (user, item) pool, titles, images and user vectors of a dataset, and their
        encodings: text states, reference latents (``strength < 1``), clicked covers (drift)."""
        from icg.data.images import load_image

        cfg = self.config
        if data.impressions is None or data.users is None or data.items is None:
            raise ValueError(f"{cfg.data}: stage B needs items, users and impressions")
        imp = data.impressions
        self.pairs = (
            imp[["user_id", "item_id"]]
            .astype(str)
            .drop_duplicates()
            .sort_values(["user_id", "item_id"])
        )  # the (user, item) pool, in a fixed order
        self.pairs = self.pairs.reset_index(drop=True)
        items = data.items.set_index("item_id")
        self.titles = {str(i): str(items.at[i, "title"]) for i in items.index}
        self.item_images = {str(i): load_image(items.at[i, "image"]) for i in items.index}
        users = data.users.set_index("user_id")
        self.user_vectors = {
            str(u): torch.as_tensor(np.asarray(users.at[u, "embedding"], dtype=np.float32))
            for u in users.index
        }
        self.user_dim = data.embedding_dim
        self.vae_scale = vae_scale_factor(self.vae)
        self.size = cfg.resolution or self.unet.config.sample_size * self.vae_scale
        self._text: dict[str, torch.Tensor] = {}
        self._ref_latents: dict[str, torch.Tensor] = {}  # item -> reference latent (strength < 1)
        if cfg.strength < 1:
            ids = sorted(self.item_images)
            latents = encode_images(self.vae, [self.item_images[i] for i in ids], self.size)
            self._ref_latents = dict(zip(ids, latents, strict=True))
        titles = sorted(set(self.titles.values()))
        prompts = self.model.adapter.prompts(titles)  # the prompt format stage A trained with
        for title, prompt in zip(titles, prompts, strict=True):
            self._text[title] = encode_prompt(self._base.tokenizer, self._base.text_encoder, prompt)
        self._text[""] = encode_prompt(self._base.tokenizer, self._base.text_encoder, "")
        if cfg.drift_denoise_weight > 0:
            item_ids, user_ids, covers = clicked_examples(imp, data.items, data.users)
            if not item_ids:
                raise ValueError(f"{cfg.data}: drift_denoise_weight > 0 needs clicked impressions")
            self.clicks = (item_ids, user_ids)
            self.click_latents = encode_images(self.vae, covers, self.size)
        logger.info("stage B: %d (user, item) pairs, %d items", len(self.pairs), len(self.titles))

    def _generator(self, step: int, salt: int = 0) -> torch.Generator:
        rank = self.accelerator.process_index
        return step_generator(self.config.seed + 7907 * rank + 104_729 * salt, step)

    def draw(self, step: int) -> dict[str, Any]:
        """The pairs, cold-start mask, K and initial noise of ``step`` (a function of the step)."""
        cfg = self.config
        gen = self._generator(step)
        rows = torch.randint(len(self.pairs), (cfg.batch_size,), generator=gen).tolist()
        cold = (torch.rand(cfg.batch_size, generator=gen) < cfg.cold_start_fraction).tolist()
        k = sample_truncation(cfg.num_inference_steps, cfg.truncation_k, cfg.truncation_k_max, gen)
        h = self.size // self.vae_scale
        noise = torch.randn(cfg.batch_size, self.unet.config.in_channels, h, h, generator=gen)
        users = [
            None if c else self.pairs.at[r, "user_id"] for r, c in zip(rows, cold, strict=True)
        ]
        items = [self.pairs.at[r, "item_id"] for r in rows]
        return {"items": items, "users": users, "k": k, "noise": noise}

    def tokens(
        self, items: Sequence[str], users: Sequence[str | None], params: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ICG tokens ``(B, K', T)`` for (item, user) pairs (one MLLM forward per distinct item),
        with ``params`` (e.g. the stage-A reference) in place of the current parameters."""
        from torch.func import functional_call

        device = self.accelerator.device
        unique = list(dict.fromkeys(items))
        args = ([self.titles[i] for i in unique], [self.item_images[i] for i in unique])
        enc = self.icg.encoder
        if params is None:
            feats = enc(*args)
        else:
            prefix = "encoder."
            sub = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            feats = functional_call(enc, sub, args, strict=False)
        feats = feats[
            torch.tensor([unique.index(i) for i in items], device=feats.device)
        ]  # (B, K, D)
        emb = None
        if self.icg.refiner is not None and self.user_dim > 0:
            nan = torch.full((self.user_dim,), float("nan"))
            emb = torch.stack([nan if u is None else self.user_vectors[u] for u in users]).to(
                device
            )
        if params is None:
            return self.model(feats, emb), emb
        rest = {k: v for k, v in params.items() if not k.startswith("encoder.")}
        return functional_call(self.icg, rest, (feats, emb), strict=False), emb

    def sample_latents(
        self,
        items: Sequence[str],
        tokens: torch.Tensor,
        noise: torch.Tensor,
        k: int = 0,
        tokens_without_user: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """Final latents ``(B, C, h, w)`` with gradients through the last ``k`` steps (0: none).

        With ``tokens_without_user`` (the same items' tokens without a user), sampling applies
        the configured user guidance."""
        cfg = self.config
        device = self.accelerator.device
        self.scheduler.set_timesteps(cfg.num_inference_steps, device=device)
        noise = noise.to(device, self.unet.dtype)
        start = start_step(cfg.num_inference_steps, cfg.strength)
        if start == 0:
            latents = noise * self.scheduler.init_noise_sigma
        else:  # reference-guided: the item's own cover, noised to the first step that runs
            ref = torch.stack([self._ref_latents[i] for i in items]).to(noise)
            t0 = self.scheduler.timesteps[start : start + 1].repeat(len(items))
            latents = self.scheduler.add_noise(ref, noise, t0)
        text = torch.stack([self._text[self.titles[i]] for i in items])  # (B, L, C_text)
        uncond = self._text[""].expand_as(text) if cfg.guidance_scale > 1 else None
        steps = truncated_steps(cfg.num_inference_steps, k) if k > 0 else range(0)
        guidance = {}
        if tokens_without_user is not None and cfg.user_guidance != 1:
            guidance = {
                "user_guidance": cfg.user_guidance,
                "tokens_without_user": tokens_without_user,
            }
        return denoise(
            self.unet, self.scheduler, latents, text, tokens, steps,
            cfg.guidance_scale, uncond, cfg.gradient_checkpointing, start, **guidance,
        )  # fmt: skip

    def sample(
        self,
        items: Sequence[str],
        tokens: torch.Tensor,
        noise: torch.Tensor,
        k: int,
        tokens_without_user: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """Covers ``(B, 3, H, W)`` in [0, 1] (see `sample_latents`) and the steps with grad."""
        latents, used = self.sample_latents(items, tokens, noise, k, tokens_without_user)
        return decode(self.vae, latents, self.config.gradient_checkpointing), used

    def _denoise_loss(self, step: int) -> torch.Tensor:
        """The stage-A denoising loss on clicked covers (the drift regulariser) of ``step``."""
        cfg = self.config
        gen = self._generator(step, salt=1)
        item_ids, user_ids = self.clicks
        idx = torch.randint(len(item_ids), (cfg.drift_denoise_batch,), generator=gen)
        tokens, _ = self.tokens([item_ids[i] for i in idx], [user_ids[i] for i in idx])
        latents = self.click_latents[idx]
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        t = torch.randint(
            0, self.train_scheduler.config.num_train_timesteps, (len(idx),), generator=gen
        )
        t = t.to(latents.device)
        text = torch.stack([self._text[self.titles[item_ids[i]]] for i in idx])  # (B, L, C_text)
        return denoising_loss(self.unet, self.train_scheduler, latents, noise, t, text, tokens)

    @torch.no_grad()
    def generate(
        self, items: Sequence[str], users: Sequence[str | None], seed: int = 0
    ) -> np.ndarray:
        """Covers for (item, user) pairs as uint8 ``(N, H, W, 3)``, no gradient (monitoring)."""
        gen = torch.Generator().manual_seed(seed)
        h = self.size // self.vae_scale
        noise = torch.randn(len(items), self.unet.config.in_channels, h, h, generator=gen)
        tokens, _ = self.tokens(items, users)
        without = None
        if self.config.user_guidance != 1 and any(u is not None for u in users):
            without, _ = self.tokens(items, [None] * len(items))
        images, _ = self.sample(items, tokens, noise, 0, without)
        return (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
