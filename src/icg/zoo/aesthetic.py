"""A LAION-aesthetic-predictor-shaped MLP over L2-normalised CLIP image embeddings.

The published LAION "improved aesthetic predictor" (christophschuhmann/improved-aesthetic-predictor)
is `layers = Sequential(Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1))` with no activations, fed
L2-normalised CLIP ViT-L/14 image embeddings. `AestheticMLP` keeps exactly that module layout
(state-dict keys `layers.0.weight` … `layers.7.bias`) for any sizes, so the same class loads the
published predictor (`from_laion`) and coverworld-tiny `aesthetic` (`from_pretrained`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file
from torch import nn

ACTIVATIONS = ("none", "relu", "gelu")
LAION_HIDDEN = (1024, 128, 64, 16)
LAION_DROPOUTS = (0.2, 0.2, 0.1)


class AestheticMLP(ModelMixin, ConfigMixin):
    """Aesthetic score from a CLIP image embedding.

    Args:
        input_size: CLIP projection dim (768 for ViT-L/14, 64 for coverworld-tiny `clip`).
        hidden_sizes: widths of the hidden Linear layers.
        dropouts: Dropout after each of the first `len(dropouts)` hidden layers (LAION: 3 of 4).
        activation: applied after every hidden Linear; "none" is LAION's (linear) predictor.
            Activations are functional, so they take no slot in `layers` and keys match LAION's.

    Shapes:
        forward: embeds (N, input_size), L2-normalised → scores (N, 1).
    """

    @register_to_config
    def __init__(
        self,
        input_size: int = 768,
        hidden_sizes: Sequence[int] = LAION_HIDDEN,
        dropouts: Sequence[float] = LAION_DROPOUTS,
        activation: str = "none",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: expected one of {ACTIVATIONS}")
        if len(dropouts) > len(hidden_sizes):
            raise ValueError(
                f"dropouts has {len(dropouts)} entries, expected at most len(hidden_sizes)={len(hidden_sizes)}"
            )
        modules: list[nn.Module] = []
        width = input_size
        for i, size in enumerate(hidden_sizes):
            modules.append(nn.Linear(width, size))
            if i < len(dropouts):
                modules.append(nn.Dropout(dropouts[i]))
            width = size
        modules.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*modules)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """Scores (N, 1) for L2-normalised embeddings (N, input_size)."""
        if embeds.ndim != 2 or embeds.shape[-1] != self.config.input_size:
            raise ValueError(
                f"embeds has shape {tuple(embeds.shape)}, expected (N, {self.config.input_size})"
            )
        x = embeds
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if isinstance(layer, nn.Linear) and i != last and self.config.activation != "none":
                x = F.relu(x) if self.config.activation == "relu" else F.gelu(x)
        return x

    @classmethod
    def from_laion(cls, weights: str | Path | Mapping[str, torch.Tensor]) -> AestheticMLP:
        """Load the published LAION predictor layout (`layers.{0,2,4,6,7}.*`), sizes from shapes.

        Args:
            weights: a state dict or a `.safetensors` file (icg never unpickles a file: convert
                the published `.pth` once, see `load_aesthetic_predictor`).
        """
        if isinstance(weights, Mapping):
            state = dict(weights)
        elif str(weights).endswith(".safetensors"):
            state = load_file(str(weights))
        else:
            raise ValueError(f"{weights}: expected a .safetensors file of the LAION layout")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        linear = sorted(
            (int(k.split(".")[1]), v)
            for k, v in state.items()
            if k.startswith("layers.") and k.endswith(".weight")
        )
        if len(linear) < 2:
            raise ValueError(
                f"no LAION layout in keys {sorted(state)[:6]}…: expected layers.N.weight"
            )
        hidden = [w.shape[0] for _, w in linear[:-1]]
        # a gap of one index between consecutive Linear layers is a Dropout
        n_dropouts = sum(
            1 for (a, _), (b, _) in zip(linear, linear[1:], strict=False) if b - a == 2
        )
        model = cls(
            input_size=linear[0][1].shape[1],
            hidden_sizes=tuple(hidden),
            dropouts=LAION_DROPOUTS[:n_dropouts] if len(hidden) == 4 else (0.0,) * n_dropouts,
        )
        model.load_state_dict(state)
        return model
