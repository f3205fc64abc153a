"""An exponential moving average of the trained weights: the weights a run saves to draw with.

Stages A and B keep, beside the raw weights the optimizer moves, their Polyak-Ruppert average
with exponential forgetting (Polyak & Juditsky 1992; as in DDPM, Ho et al. 2020, App. B, and
every diffusers training script). Each update is diffusers' `EMAModel` step,

    ema ← ema − (1 − d_t) · (ema − θ),   d_t = min(decay, (1 + t) / (10 + t)),  d_1 = 0,

so the average starts at the first updated weights and its window widens with the run (about
``t / 9`` steps) until it reaches ``1 / (1 − decay)``: a short run is not dragged back to its
initialisation. The run's adapter folder holds the average; checkpoints hold both the raw
weights (the optimizer resumes from them) and the average with its step count, so a resumed run
ends with the same average to the bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from diffusers.training_utils import EMAModel

from icg.artifacts import ArtifactError
from icg.checkpoints import EMA_TENSORS, load_tensors

__all__ = [
    "WeightEMA",
    "ema_checkpoint_parts",
    "ema_decay_at",
    "named_parameters_of",
    "restore_ema",
]


def ema_decay_at(step: int, decay: float) -> float:
    """The decay of the ``step``-th update (1-based): ``0`` at the first, then
    ``min(decay, (1 + t) / (10 + t))`` with ``t = step - 1`` (diffusers' `EMAModel` warm-up)."""
    t = step - 1
    return 0.0 if t <= 0 else min(decay, (1 + t) / (10 + t))


def named_parameters_of(
    module: torch.nn.Module, params: Sequence[torch.nn.Parameter], prefix: str = ""
) -> dict[str, torch.nn.Parameter]:
    """``params`` by their names in ``module`` (``prefix`` + name), in the order given.

    Raises:
        ValueError: a parameter is not one of ``module``'s.
    """
    names = {id(p): n for n, p in module.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"params: {len(missing)} of them are not parameters of the module")
    return {prefix + names[id(p)]: p for p in params}


class WeightEMA:
    """The EMA of named parameters (diffusers' `EMAModel`, ``foreach=False``: one update order).

    Args:
        params: the trained parameters by a stable name (the key of each saved tensor).
        decay: the largest decay (the window after warm-up is ``1 / (1 - decay)`` updates).
    """

    def __init__(self, params: Mapping[str, torch.nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay: expected a value in (0, 1), got {decay}")
        self.names = list(params)
        self.params = list(params.values())
        self._ema = EMAModel(self.params, decay=decay)

    @property
    def decay(self) -> float:
        """The largest decay."""
        return self._ema.decay

    @property
    def steps(self) -> int:
        """Updates made so far."""
        return self._ema.optimization_step

    def update(self) -> None:
        """Fold the current weights into the average (call after each optimizer step)."""
        self._ema.step(self.params)

    def averaged(self) -> dict[str, torch.Tensor]:
        """The averaged weights by name (CPU copies)."""
        return {
            n: s.detach().cpu().contiguous().clone()
            for n, s in zip(self.names, self._ema.shadow_params, strict=True)
        }

    def state(self) -> dict[str, float | int]:
        """What a checkpoint keeps as JSON beside `averaged`."""
        return {"decay": self.decay, "steps": self.steps}

    def load(self, tensors: Mapping[str, torch.Tensor], state: Mapping, source: str = "") -> None:
        """Restore `averaged` and `state` from a checkpoint.

        Raises:
            ArtifactError: the names or shapes do not match these parameters, or ``state`` lacks
                an int ``steps`` (``source`` names the file).
        """
        if set(tensors) != set(self.names):
            extra, lost = set(tensors) - set(self.names), set(self.names) - set(tensors)
            raise ArtifactError(
                f"{source}: EMA weights do not fit this model "
                f"(unexpected {sorted(extra)[:3]}, missing {sorted(lost)[:3]})"
            )
        steps = state.get("steps")
        if not isinstance(steps, int) or steps < 0:
            raise ArtifactError(f"{source}: 'ema.steps' must be an int >= 0, got {steps!r}")
        for name, shadow in zip(self.names, self._ema.shadow_params, strict=True):
            value = tensors[name]
            if value.shape != shadow.shape:
                raise ArtifactError(
                    f"{source}: EMA weight {name!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(shadow.shape)}"
                )
            shadow.copy_(value.to(shadow.device, shadow.dtype))
        self._ema.optimization_step = steps

    def copy_to_model(self) -> None:
        """Replace the live weights by the average (the weights that draw)."""
        self._ema.copy_to(self.params)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the live weights are the average; the raw ones come back after."""
        raw = [p.detach().clone() for p in self.params]
        self._ema.copy_to(self.params)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw, strict=True):
                    p.copy_(r)


def ema_checkpoint_parts(ema: WeightEMA | None) -> tuple[dict, dict]:
    """What `icg.checkpoints.save_checkpoint` keeps of ``ema``: ``(state entries, tensors)``,
    both empty without an EMA (the checkpoint is then what it was before EMAs)."""
    if ema is None:
        return {}, {}
    return {"ema": ema.state()}, {EMA_TENSORS: ema.averaged()}


def restore_ema(ema: WeightEMA | None, checkpoint, state: Mapping) -> None:
    """Restore ``ema`` from a checkpoint written with `ema_checkpoint_parts` (no-op without one).

    Raises:
        ArtifactError: the checkpoint holds no EMA (it was written with ``ema_decay: null``) or
            one that does not fit.
    """
    if ema is None:
        return
    if not isinstance(state.get("ema"), dict):
        raise ArtifactError(
            f"{checkpoint}: holds no EMA weights; it was written with ema_decay: null"
        )
    expected = {n: p.shape for n, p in zip(ema.names, ema.params, strict=True)}
    tensors = load_tensors(checkpoint, EMA_TENSORS, expected)
    ema.load(tensors, state["ema"], source=f"{checkpoint}/{EMA_TENSORS}.safetensors")
