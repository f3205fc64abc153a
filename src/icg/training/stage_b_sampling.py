"""What `icg.training.stage_b.StageBTrainer` samples with: seeded generators, ICG tokens, the
sampling chain of the base's family (a UNet's DDIM chain, or the SD3 / FLUX flow sampler) with
gradients through its last K steps, and covers.

A mixin: it reads what ``StageBTrainer.setup`` sets (``config``, ``pool``, ``accelerator``,
``model``, ``unet`` (the denoiser), ``vae``, ``scheduler``, ``flow``). Every stage-B trainer
samples through these methods, so a trainer that uses only them runs on every family.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.func import functional_call

from icg.training.common import step_generator
from icg.training.sampling import (
    decode,
    denoise,
    denoise_flow,
    start_step,
    truncated_steps,
)


class StageBSampling:
    """Sampling methods of `StageBTrainer` (module doc)."""

    @property
    def latent_channels(self) -> int:
        """Channels of the latents sampled from (the VAE's for SD3 / FLUX: FLUX's transformer
        reads them packed 2×2)."""
        return self.vae.config.latent_channels if self.flow else self.unet.config.in_channels

    # -- sampling --------------------------------------------------------------------------
    def generator(self, step: int, salt: int = 0) -> torch.Generator:
        """The generator of ``step`` on this process (``salt`` separates independent streams)."""
        rank = self.accelerator.process_index
        return step_generator(self.config.seed + 7907 * rank + 104_729 * salt, step)

    def tokens(
        self, items: Sequence[str], users: Sequence[str | None], params: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ICG tokens ``(B, K', T)`` for (item, user) pairs (one MLLM forward per distinct item),
        with ``params`` (e.g. the stage-A reference) in place of the current parameters."""
        pool, device = self.pool, self.accelerator.device
        unique = list(dict.fromkeys(items))
        args = ([pool.titles[i] for i in unique], [pool.item_images[i] for i in unique])
        enc = self.icg.encoder
        if params is None:
            feats = enc(*args)
        else:
            prefix = "encoder."
            sub = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            feats = functional_call(enc, sub, args, strict=False)
        index = torch.tensor([unique.index(i) for i in items], device=feats.device)
        feats = feats[index]  # (B, K, D)
        emb = None
        if self.icg.refiner is not None and pool.user_dim > 0:
            nan = torch.full((pool.user_dim,), float("nan"))
            emb = torch.stack([nan if u is None else pool.user_vectors[u] for u in users])
            emb = emb.to(device)  # (B, E)
        if params is None:
            return self.model(feats, emb), emb
        rest = {k: v for k, v in params.items() if not k.startswith("encoder.")}
        return functional_call(self.icg, rest, (feats, emb), strict=False), emb

    def start_latents(self, items: Sequence[str], noise: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Latents ``(B, C, h, w)`` sampling starts from and its first step (sets the timesteps):
        noise, or (``strength < 1``) each item's own cover noised to that step (SDEdit)."""
        steps, device = self.config.num_inference_steps, self.accelerator.device
        self.scheduler.set_timesteps(steps, device=device)
        noise = noise.to(device, self.unet.dtype)
        start = start_step(steps, self.config.strength)
        if start == 0:
            return noise * self.scheduler.init_noise_sigma, 0
        ref = torch.stack([self.pool.ref_latents[i] for i in items]).to(noise)  # the covers
        t0 = self.scheduler.timesteps[start : start + 1].repeat(len(items))
        return self.scheduler.add_noise(ref, noise, t0), start

    def sample_latents(
        self,
        items: Sequence[str],
        tokens: torch.Tensor,
        noise: torch.Tensor,
        k: int = 0,
        tokens_without_user: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """Final latents ``(B, C, h, w)`` with gradients through the last ``k`` steps (0: none),
        and the steps that carried them.

        With ``tokens_without_user`` (the same items' tokens without a user), sampling applies
        the configured user guidance."""
        cfg, pool = self.config, self.pool
        device = self.accelerator.device
        noise = noise.to(device, self.unet.dtype)
        text = pool.conditioning(list(items))  # (B, ...) with pooled / time ids by family
        uncond = pool.unconditional(len(items)) if cfg.guidance_scale > 1 else None
        steps = truncated_steps(cfg.num_inference_steps, k) if k > 0 else range(0)
        guidance = {}
        if tokens_without_user is not None and cfg.user_guidance != 1:
            guidance = {
                "user_guidance": cfg.user_guidance,
                "tokens_without_user": tokens_without_user,
            }
        if self.flow:
            return denoise_flow(
                self.unet, self.scheduler, noise, text, tokens, cfg.num_inference_steps, steps,
                cfg.guidance_scale, uncond, cfg.gradient_checkpointing, **guidance,
            )  # fmt: skip
        latents, start = self.start_latents(items, noise)
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

    @torch.no_grad()
    def generate(
        self, items: Sequence[str], users: Sequence[str | None], seed: int = 0
    ) -> np.ndarray:
        """Covers for (item, user) pairs as uint8 ``(N, H, W, 3)``, no gradient (monitoring)."""
        gen = torch.Generator().manual_seed(seed)
        h = self.pool.size // self.pool.vae_scale
        noise = torch.randn(len(items), self.latent_channels, h, h, generator=gen)
        tokens, _ = self.tokens(items, users)
        without = None
        if self.config.user_guidance != 1 and any(u is not None for u in users):
            without, _ = self.tokens(items, [None] * len(items))
        images, _ = self.sample(items, tokens, noise, 0, without)
        return (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
