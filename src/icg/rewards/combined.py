"""MultiReward: normalise each reward with running statistics and combine them with weights.

ICG (EMNLP 2025, Sec. 3.4) trains with several rewards at once (aesthetic, relevance,
preference). Their scales differ by orders of magnitude, so each is standardised with its
running mean and variance before weighting (as reward standardisation in DDPO, Black et al.
2024, Sec. 4.3, and DRaFT's multi-reward experiments, Clark et al. 2024, Sec. 5.4). The
statistics are updated in training mode only and saved with the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from icg.artifacts import read_safetensors
from icg.io import atomic_path
from icg.rewards.base import Reward


def merge_moments(
    mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge a batch into running (mean, population variance, count).

    Chan, Golub & LeVeque 1979 ("Updating formulae and a pairwise algorithm for computing sample
    variances", Eq. 2.1): exact and order-independent, so merging batches one by one equals the
    statistics of their concatenation.
    """
    batch = batch.detach().to(mean.dtype).flatten()
    n_b = torch.tensor(float(batch.numel()), dtype=mean.dtype, device=mean.device)
    if n_b == 0:
        return mean, var, count
    mean_b = batch.mean()
    var_b = batch.var(unbiased=False)
    total = count + n_b
    delta = mean_b - mean
    new_mean = mean + delta * n_b / total
    m2 = var * count + var_b * n_b + delta**2 * count * n_b / total
    return new_mean, m2 / total, total


def standardise(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with the statistics treated as constants (no gradient)."""
    return (x - mean.detach().to(x.dtype)) / torch.sqrt(var.detach().to(x.dtype) + eps)


def parse_weights(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """``"aesthetic=1,relevance=0.5"`` (or a mapping) → ``{"aesthetic": 1.0, "relevance": 0.5}``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): float(v) for k, v in spec.items()}
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"rewards: expected NAME=WEIGHT, got {part!r} in {spec!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError as err:
            raise ValueError(
                f"rewards: weight of {name!r} must be a number, got {value!r}"
            ) from err
    return out


class RunningMoments(nn.Module):
    """Running mean and variance of one reward (float64 buffers: saved with the run)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        var = self.var if self.count > 0 else torch.zeros_like(self.var)
        mean, var, count = merge_moments(self.mean, var, self.count, batch)
        self.mean.copy_(mean)
        self.var.copy_(var)
        self.count.copy_(count)


class MultiReward(nn.Module):
    """Weighted sum of standardised rewards.

    Args:
        rewards: name → `Reward` (frozen).
        weights: name → weight (default 1 each); a zero weight still computes and logs it.
        normalise: standardise each reward by its running statistics before weighting.
        eps: added to the variance.

    ``gather`` (default identity) is applied to each batch of raw rewards before the statistics
    are updated; a distributed trainer sets it to ``accelerator.gather`` so that every process
    holds the same statistics.
    """

    def __init__(
        self,
        rewards: Mapping[str, Reward],
        weights: Mapping[str, float] | None = None,
        normalise: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not rewards:
            raise ValueError("rewards: expected at least one reward")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(rewards))
        if unknown:
            raise ValueError(
                f"weights: unknown reward(s) {unknown}, expected among {sorted(rewards)}"
            )
        self.rewards = nn.ModuleDict(dict(rewards))
        self.weights = {name: float(weights.get(name, 1.0)) for name in rewards}
        self.normalise = normalise
        self.eps = eps
        self.stats = nn.ModuleDict({name: RunningMoments() for name in rewards})
        self.gather: Callable[[torch.Tensor], torch.Tensor] = lambda x: x

    def forward(
        self,
        images: torch.Tensor,
        titles: Sequence[str],
        users: torch.Tensor | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Combined reward ``(B,)`` and info: each raw reward, each standardised one, the total."""
        total = images.new_zeros(images.shape[0])
        info: dict[str, torch.Tensor] = {}
        for name, reward in self.rewards.items():
            raw, extra = reward(images, titles, users, **context)  # (B,)
            info[name] = raw.detach()
            info.update({k: v for k, v in extra.items() if k not in info})
            if self.normalise:
                stats = self.stats[name]
                if self.training:
                    stats.update(self.gather(raw.detach()))
                value = standardise(raw, stats.mean, stats.var, self.eps)
                info[f"{name}_normalised"] = value.detach()
            else:
                value = raw
            total = total + self.weights[name] * value
        info["reward"] = total.detach()
        return total, info

    def stats_state(self) -> dict[str, torch.Tensor]:
        """The running statistics only (``{name}.mean|var|count``), for saving with the run."""
        return {
            f"{n}.{k}": v.detach().clone()
            for n, s in self.stats.items()
            for k, v in s.state_dict().items()
        }

    def load_stats_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore statistics written by :meth:`stats_state` (names must match)."""
        for name, stats in self.stats.items():
            stats.load_state_dict({k: state[f"{name}.{k}"] for k in ("mean", "var", "count")})

    def save_stats(self, path: str | Path) -> None:
        """Write the statistics to a safetensors file atomically."""

        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.stats_state().items()}, str(tmp))

    def load_stats(self, path: str | Path) -> None:
        """Restore statistics saved by :meth:`save_stats`; `icg.artifacts.ArtifactError` names
        the file when it is truncated, holds NaN/inf, or lacks one of this reward's entries."""

        tensors, _ = read_safetensors(path, {k: v.shape for k, v in self.stats_state().items()})
        self.load_stats_state(tensors)
