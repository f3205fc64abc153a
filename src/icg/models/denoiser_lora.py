"""A peft LoRA on the base denoiser's attention projections (UNet or SD3 / FLUX transformer).

Stage B may train one beside the ICG adapter (``lora_rank > 0``); it is saved as the denoiser's
peft state dict in ``unet_lora.safetensors`` next to the run's ``adapter/`` folder, with its
rank, alpha and target modules in the file's metadata. `ICGPipeline.from_pretrained` finds it
(`find_lora`) and draws with it (`attach_lora`), so a run is drawn with exactly the weights it
was trained and scored with. The base weights are never changed: `remove_lora` restores them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from icg.artifacts import ArtifactError, read_safetensors
from icg.io import atomic_path
from icg.layout import LORA_FILE  # the name predates the transformers; it holds any denoiser's

logger = logging.getLogger(__name__)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_FORMAT = "icg-denoiser-lora"


def add_lora(
    denoiser: torch.nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: list[str] | None = None,
    init: str | bool = "gaussian",
) -> list[torch.nn.Parameter]:
    """Add a rank-``rank`` LoRA (alpha = rank unless given) to the denoiser's attention
    projections through diffusers' peft integration; returns its parameters."""
    # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
    from peft import LoraConfig

    if rank <= 0:
        raise ValueError(f"rank: expected a positive LoRA rank, got {rank}")
    denoiser.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha if alpha is not None else rank,
            init_lora_weights=init,
            target_modules=list(targets or LORA_TARGETS),
        )
    )
    return [p for n, p in denoiser.named_parameters() if "lora_" in n]


def lora_settings(denoiser: torch.nn.Module) -> dict[str, str]:
    """The active LoRA's rank, alpha and targets as safetensors metadata strings."""
    config = denoiser.peft_config[denoiser.active_adapters()[0]]
    return {
        "format": LORA_FORMAT,
        "rank": str(int(config.r)),
        "alpha": str(float(config.lora_alpha)),
        "targets": json.dumps(sorted(config.target_modules)),
    }


def save_lora(denoiser: torch.nn.Module, path: str | Path) -> None:
    """Write the denoiser's LoRA weights (peft state dict) and settings to safetensors atomically."""
    # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(denoiser)
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=lora_settings(denoiser))


def load_lora_weights(denoiser: torch.nn.Module, path: str | Path) -> None:
    """Load LoRA weights written by `save_lora` into a denoiser that `add_lora` prepared.

    Raises:
        ArtifactError: the file is missing, truncated, holds NaN/inf, or does not fit the
            denoiser's LoRA (naming the file and the first mismatching key).
    """
    # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
    from peft.utils import set_peft_model_state_dict

    tensors, _ = read_safetensors(path)
    result = set_peft_model_state_dict(denoiser, tensors)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
    if unexpected or missing:
        first = (unexpected or missing)[0]
        raise ArtifactError(
            f"{path}: the LoRA does not fit this {type(denoiser).__name__} ({len(unexpected)} "
            f"unexpected, {len(missing)} missing keys, first {first!r}). Was it trained on this base?"
        )


def read_settings(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> dict:
    """Rank, alpha and targets of a saved LoRA: from its metadata, or (files written before the
    metadata existed) rank from the ``lora_A`` shapes, alpha = rank, the default targets."""
    if metadata.get("format") == LORA_FORMAT:
        try:
            return {
                "rank": int(metadata["rank"]),
                "alpha": float(metadata["alpha"]),
                "targets": list(json.loads(metadata["targets"])),
            }
        except (KeyError, ValueError, TypeError) as err:
            raise ArtifactError(
                f"{path}: unreadable LoRA settings in the metadata ({err})"
            ) from err
    ranks = {int(v.shape[0]) for k, v in tensors.items() if "lora_A" in k}
    if len(ranks) != 1:
        raise ArtifactError(
            f"{path}: expected LoRA weights of one rank, found ranks {sorted(ranks)}"
        )
    rank = ranks.pop()
    return {"rank": rank, "alpha": float(rank), "targets": list(LORA_TARGETS)}


def attach_lora(denoiser: torch.nn.Module, path: str | Path) -> None:
    """Add the LoRA saved at ``path`` to ``denoiser`` (settings from the file) and load it."""
    tensors, metadata = read_safetensors(path)
    settings = read_settings(path, tensors, metadata)
    add_lora(denoiser, settings["rank"], settings["alpha"], settings["targets"], init=False)
    try:
        load_lora_weights(denoiser, path)
    except ArtifactError:
        remove_lora(denoiser)
        raise
    logger.info("loaded the denoiser LoRA %s (rank %d)", path, settings["rank"])


def remove_lora(denoiser: torch.nn.Module) -> None:
    """Delete the denoiser's active LoRA adapters (the base weights were never changed)."""
    denoiser.delete_adapters(denoiser.active_adapters())


def find_lora(adapter_dir: str | Path) -> Path | None:
    """The stage-B LoRA of the run an adapter folder belongs to: ``LORA_FILE`` in the folder or
    beside it (``RUN/<name>/unet_lora.safetensors`` for ``RUN/<name>/adapter``), else ``None``."""
    adapter_dir = Path(adapter_dir)
    for folder in (adapter_dir, adapter_dir.parent):
        if (folder / LORA_FILE).is_file():
            return folder / LORA_FILE
    return None
