"""An optional LoRA on the base UNet's attention projections (stage B): add, save, load.

The weights are the peft state dict of the UNet, stored in ``unet_lora.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from icg.artifacts import read_safetensors
from icg.io import atomic_path
from icg.layout import LORA_FILE

__all__ = ["LORA_FILE", "add_unet_lora", "load_unet_lora", "remove_unet_lora", "save_unet_lora"]

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_unet_lora(unet: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    """Add a rank-``rank`` LoRA (alpha = rank, gaussian init) to the UNet's attention
    projections; returns its parameters."""
    # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
    from peft import LoraConfig

    unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS
        )
    )
    return [p for n, p in unet.named_parameters() if "lora_" in n]


def save_unet_lora(unet: torch.nn.Module, path: str | Path) -> None:
    """Write the UNet's LoRA weights (peft state dict) to a safetensors file atomically."""
    # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))


def load_unet_lora(unet: torch.nn.Module, path: str | Path) -> None:
    """Load LoRA weights written by `save_unet_lora` into a UNet that `add_unet_lora` prepared."""
    # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
    from peft.utils import set_peft_model_state_dict

    tensors, _ = read_safetensors(path)  # ArtifactError: missing, truncated, NaN/inf
    set_peft_model_state_dict(unet, tensors)


def remove_unet_lora(unet: torch.nn.Module) -> None:
    """Delete the UNet's active LoRA adapters (the base weights were never changed)."""
    unet.delete_adapters(unet.active_adapters())
