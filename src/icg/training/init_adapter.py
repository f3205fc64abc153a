"""Stage A's starting point: a pretrained ICG adapter (``--init-adapter``), or zero init.

IP-Adapter (Ye et al. 2023, Sec. 3.3) is pretrained once per base on image-text pairs and then
reused; `icg.zoo.recipes.icg_adapter` pretrains ICG's meta tokens and adapter that way (a cover
denoised from its own MLLM features). Stage A can start from such a folder instead of from zero:
its meta tokens and adapter are copied into the freshly built model. The user refiner is not
part of a pretrained adapter (platform users do not exist at pretraining time), so stage A's
refiner starts at its zero gate, the identity: the first forward of stage A equals the pretrained
model's. A refiner is copied only when the folder has one that fits (another platform's stage A).

``none`` keeps today's zero-initialised start, bit for bit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, Field

from icg.artifacts import check_module_folder, read_safetensors
from icg.models.backbones import adapter_class
from icg.models.icg_model import ICGModel
from icg.models.meta_tokens import LORA_WEIGHTS_NAME, MetaTokenEncoder
from icg.models.paths import resolve_adapter_dir, resolve_model_path
from icg.models.user_refiner import UserRefiner

logger = logging.getLogger(__name__)

NONE = "none"
# what a config value must look like; checked when the config is validated, before any training
INIT_ADAPTER_HELP = (
    "ICG model whose meta tokens and adapter stage A starts from: a folder written by "
    "ICGModel.save_pretrained (or a run folder holding adapter/), zoo:icg-adapter, or none "
    "(zero init)"
)
# config keys that describe where a model came from, not its shape: compared by resolved path
_ORIGIN_KEYS = ("base_model", "mllm_name_or_path")


def check_init_adapter(value: str) -> str:
    """Validate an ``init_adapter`` value: ``none``, a ``zoo:`` name, or an existing folder.

    A ``zoo:`` name is resolved later (a model not yet trained fails when stage A starts, with
    the command that trains it).
    """
    if value == NONE or value.startswith("zoo:"):
        return value
    folder = resolve_adapter_dir(value)
    if not folder.is_dir():
        raise ValueError(f"init_adapter: {value!r} is not a folder, a zoo: name or 'none'")
    ICGModel.read_config(folder)  # names the file when it is not an ICG adapter
    return value


InitAdapter = Annotated[
    str, AfterValidator(check_init_adapter), Field(description=INIT_ADAPTER_HELP)
]


def init_adapter_dir(value: str | None) -> Path | None:
    """The folder an ``init_adapter`` value names (``None`` for ``none``)."""
    if value is None or value == NONE:
        return None
    return resolve_adapter_dir(resolve_model_path(value))


def _same_origin(a: str | None, b: str | None) -> bool:
    """Whether two model references name the same model (``zoo:NAME`` and its folder agree)."""
    if a is None or b is None or a == b:
        return True
    try:
        a, b = resolve_model_path(a), resolve_model_path(b)
    except FileNotFoundError:
        return False
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def config_mismatches(part: str, saved: dict[str, Any], built: dict[str, Any]) -> list[str]:
    """``"part.key: saved != built"`` for every architecture key of two part configs that
    differs (diffusers' private ``_*`` keys skipped; model origins compared by resolved path)."""
    out = []
    for key in sorted(set(saved) | set(built)):
        if key.startswith("_"):
            continue
        a, b = saved.get(key), built.get(key)
        if key in _ORIGIN_KEYS:
            same = _same_origin(a, b)
        else:  # JSON turns tuples into lists
            same = a == b or (isinstance(b, tuple) and list(b) == a)
        if not same:
            out.append(f"{part}.{key}: {a!r} != {b!r}")
    return out


def load_init_adapter(model: ICGModel, value: str | None) -> Path | None:
    """Copy the pretrained ICG model that ``value`` names into ``model`` (stage A's fresh one).

    Meta tokens (and their MLLM LoRA) and the adapter are copied; the refiner only when the
    folder has one with the same config; the user prompt never (stage A distils its own).

    Returns:
        The folder loaded, or ``None`` for ``none``.

    Raises:
        ValueError: the folder's model does not fit (names the folder and every differing field).
        ArtifactError: a part's files are missing or corrupt.
    """
    folder = init_adapter_dir(value)
    if folder is None:
        return None
    config = ICGModel.read_config(folder)
    adapter_cls = adapter_class(folder / "adapter")
    saved_encoder = check_module_folder(MetaTokenEncoder, folder / "meta_tokens")
    saved_adapter = check_module_folder(adapter_cls, folder / "adapter")
    problems = config_mismatches("meta_tokens", saved_encoder, dict(model.encoder.config))
    problems += config_mismatches("adapter", saved_adapter, dict(model.adapter.config))
    if adapter_cls is not type(model.adapter):
        problems.append(f"adapter: {adapter_cls.__name__} != {type(model.adapter).__name__}")
    if problems:
        raise ValueError(
            f"init_adapter {folder}: does not fit this stage A (same MLLM, base and token sizes "
            f"needed): {'; '.join(problems)}"
        )
    encoder = MetaTokenEncoder.from_pretrained(folder / "meta_tokens")
    adapter = adapter_cls.from_pretrained(folder / "adapter")
    with torch.no_grad():
        model.encoder.meta_tokens.copy_(encoder.meta_tokens)
        model.adapter.load_state_dict(adapter.state_dict())
    _load_lora(model, folder / "meta_tokens" / LORA_WEIGHTS_NAME)
    _load_refiner(model, folder, config)
    logger.info("stage A starts from the pretrained ICG adapter %s", folder)
    return folder


def _load_lora(model: ICGModel, file: Path) -> None:
    """The meta-token encoder's MLLM LoRA, when the pretrained model has one."""
    if model.encoder.config.lora_rank == 0 or not file.is_file():
        return
    # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
    from peft import set_peft_model_state_dict

    tensors, _ = read_safetensors(file)  # ArtifactError: truncated, NaN
    set_peft_model_state_dict(model.encoder.mllm, tensors)


def _load_refiner(model: ICGModel, folder: Path, config: dict) -> None:
    """Copy the folder's refiner when both have one with the same config; else keep the zero
    gate (log why)."""
    if model.refiner is None or "refiner" not in config["parts"]:
        return
    saved = check_module_folder(UserRefiner, folder / "refiner")
    if config_mismatches("refiner", saved, dict(model.refiner.config)):
        logger.info("init_adapter %s: its refiner does not fit this platform; zero init", folder)
        return
    model.refiner.load_state_dict(UserRefiner.from_pretrained(folder / "refiner").state_dict())
