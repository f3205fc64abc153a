"""User guidance: classifier-free guidance between the with-user and the without-user prediction.

As CFG contrasts a prompt with the empty prompt (Ho & Salimans 2022, Eq. 6), user guidance
contrasts the personalized ICG context with the same item's context without a user (the
refiner's identity branch, which stage A trains by user dropout):

    eps_ug = eps(item) + w_u * (eps(item, user) - eps(item))

``w_u = 1`` is the plain personalized prediction, ``w_u = 0`` the non-personalized one, and
``w_u > 1`` pushes further in the user's direction. Text CFG is then applied on top by the base
pipeline as usual. `user_guidance_hook` applies it inside any stock diffusers pipeline: a UNet
forward hook runs the UNet once more with the no-user tokens and mixes the two outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from icg.models.attention import ICG_TOKENS_KWARG


def mix_user_guidance(
    without_user: torch.Tensor, with_user: torch.Tensor, scale: float
) -> torch.Tensor:
    """``without + scale * (with - without)``: user guidance on two UNet predictions."""
    return without_user + scale * (with_user - without_user)


def combine_branches(
    output: torch.Tensor, n: int, user_guidance: float = 1.0, guidance_scale: float = 1.0
) -> torch.Tensor:
    """The guided prediction from one batched forward over ``n`` stacked branches, in the order
    [unconditional (CFG on)], [without the user (user guidance on)], personalized: user guidance
    first, then classifier-free guidance (Ho & Salimans 2022, Eq. 6)."""
    parts = list(output.chunk(n))
    out = parts.pop()
    if user_guidance != 1.0:
        out = mix_user_guidance(parts.pop(), out, user_guidance)
    if guidance_scale > 1.0:
        uncond = parts.pop()
        out = uncond + guidance_scale * (out - uncond)
    return out


class _UserGuidanceHook:
    def __init__(self, without_user: torch.Tensor, scale: float, kwargs_name: str) -> None:
        self.without_user = without_user
        self.scale = scale
        self.kwargs_name = kwargs_name
        self.active = False

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict, output):
        if self.active:  # the nested no-user forward below
            return output
        self.active = True
        try:
            extra = {**(kwargs.get(self.kwargs_name) or {})}
            extra[ICG_TOKENS_KWARG] = self.without_user
            base = module(*args, **{**kwargs, self.kwargs_name: extra})
        finally:
            self.active = False
        if isinstance(output, tuple):
            return (mix_user_guidance(base[0], output[0], self.scale), *output[1:])
        output.sample = mix_user_guidance(base.sample, output.sample, self.scale)
        return output


@contextmanager
def user_guidance_hook(
    unet: torch.nn.Module,
    without_user_tokens: torch.Tensor,
    scale: float,
    kwargs_name: str = "cross_attention_kwargs",
) -> Iterator[None]:
    """While active, every ``unet(...)`` call returns the user-guided prediction.

    Args:
        unet: the base UNet with the ICG processors installed.
        without_user_tokens: the ICG tokens of the same rows without a user, laid out exactly
            as the tokens the pipeline passes (CFG: ``[zeros, tokens]``).
        scale: ``w_u``.
        kwargs_name: the denoiser keyword that carries the tokens (``joint_attention_kwargs`` for
            SD3 / FLUX transformers).
    """
    handle = unet.register_forward_hook(
        _UserGuidanceHook(without_user_tokens, scale, kwargs_name), with_kwargs=True
    )
    try:
        yield
    finally:
        handle.remove()
