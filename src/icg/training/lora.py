"""An optional LoRA on the base denoiser's attention projections (stage B): add, save, load.

The implementation lives in `icg.models.denoiser_lora`, shared with `ICGPipeline`, which draws
with the LoRA a run saved; these are stage B's names for it. The weights are the peft state dict
of the UNet (or transformer), stored in ``unet_lora.safetensors`` with the LoRA's settings.
"""

from __future__ import annotations

from icg.models.denoiser_lora import (
    LORA_FILE,
    LORA_TARGETS,
    add_lora,
    load_lora_weights,
    remove_lora,
    save_lora,
)

__all__ = [
    "LORA_FILE",
    "LORA_TARGETS",
    "add_unet_lora",
    "load_unet_lora",
    "remove_unet_lora",
    "save_unet_lora",
]

add_unet_lora = add_lora
save_unet_lora = save_lora
load_unet_lora = load_lora_weights
remove_unet_lora = remove_lora
