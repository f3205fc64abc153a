"""ICGModel: the trainable parts of ICG in one container, saved as a directory of subfolders.

adapter_dir/
  icg_config.json          # format, version, base model and MLLM names/paths
  meta_tokens/             # MetaTokenEncoder: config.json + safetensors (+ mllm_lora.safetensors)
  refiner/                 # UserRefiner (absent when the model has no refiner)
  adapter/                 # CoverAdapter
  user_prompt/             # UserPrompt: taste words for the text prompt (optional)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from icg.artifacts import ArtifactError, check_module_folder, read_json_object
from icg.layout import ICG_CONFIG_FILE
from icg.models.adapter import CoverAdapter
from icg.models.backbones import adapter_class, build_adapter
from icg.models.meta_tokens import MetaTokenEncoder
from icg.models.mllm import load_mllm
from icg.models.paths import resolve_model_path
from icg.models.user_prompt import UserPrompt
from icg.models.user_refiner import UserRefiner

PART_CLASSES = {
    "meta_tokens": MetaTokenEncoder,
    "adapter": CoverAdapter,
    "refiner": UserRefiner,
    "user_prompt": UserPrompt,
}

ICG_CONFIG_NAME = ICG_CONFIG_FILE
REQUIRED_PARTS = ("meta_tokens", "adapter")
PARTS = (*REQUIRED_PARTS, "refiner", "user_prompt")
FORMAT = "icg-adapter"
FORMAT_VERSION = 1


class ICGModel(nn.Module):
    """Meta-token encoder, user refiner and cover adapter: everything ICG trains.

    Args:
        encoder: the meta-token encoder (with its frozen MLLM attached).
        adapter: the cover adapter (built for the base UNet).
        refiner: the user refiner (``None``: no personalization).
        user_prompt: taste words for the base prompt (``None``: the prompt has no user words).
    """

    def __init__(
        self,
        encoder: MetaTokenEncoder,
        adapter: CoverAdapter,
        refiner: UserRefiner | None = None,
        user_prompt: UserPrompt | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.refiner = refiner
        self.adapter = adapter
        self.user_prompt = user_prompt

    @classmethod
    def build(
        cls,
        unet: nn.Module,  # the denoiser: a UNet, or an SD3 / FLUX transformer
        mllm: nn.Module,
        processor,
        *,
        num_meta_tokens: int = 8,
        num_tokens: int | None = None,
        user_dim: int = 0,
        refiner_hidden_dim: int = 64,
        base_model: str | None = None,
        mllm_name_or_path: str | None = None,
        lora_rank: int = 0,
        prompt_template: str | None = None,
        base_prompt: str = "{title}",
        global_conditioning: bool = False,
        read_image: bool = True,
    ) -> ICGModel:
        """A fresh, zero-initialised ICG model for the denoiser ``unet`` and ``mllm`` (the
        adapter's family follows the denoiser: `icg.models.backbones`)."""
        hidden = mllm.get_input_embeddings().embedding_dim
        extra = {"prompt_template": prompt_template} if prompt_template else {}
        encoder = MetaTokenEncoder(
            hidden_size=hidden,
            num_meta_tokens=num_meta_tokens,
            mllm_name_or_path=mllm_name_or_path,
            lora_rank=lora_rank,
            read_image=read_image,
            **extra,
        )
        encoder.attach(mllm, processor)
        refiner = None
        if user_dim > 0:
            refiner = UserRefiner(
                feature_dim=hidden,
                user_dim=user_dim,
                hidden_dim=refiner_hidden_dim,
            )
        adapter = build_adapter(
            unet,
            feature_dim=hidden,
            num_feature_tokens=num_meta_tokens,
            num_tokens=num_tokens,
            base_model=base_model,
            base_prompt=base_prompt,
            global_conditioning=global_conditioning,
        )
        return cls(encoder, adapter, refiner)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Meta tokens (+ LoRA), refiner and adapter parameters."""
        params = self.encoder.trainable_parameters() + list(self.adapter.parameters())
        if self.refiner is not None:
            params += list(self.refiner.parameters())
        return params

    def forward(
        self,
        features: torch.Tensor,
        user_embeddings: torch.Tensor | None = None,
        user_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ICG tokens ``(B, K', token_dim)`` from item features ``(B, K, D)`` and optional users.

        A model without a refiner but with user words (``user_refiner: false`` in stage A) makes
        the same tokens for every user: its user reaches the image through `prompts` alone."""
        if self.refiner is not None:
            features = self.refiner(features, user_embeddings, user_mask)  # (B, K, D)
        elif user_embeddings is not None and self.user_prompt is None:
            raise ValueError("user_embeddings: this ICG model has no user refiner or user words")
        return self.adapter(features)

    def prompts(self, titles: list[str], user_embeddings: torch.Tensor | None = None) -> list[str]:
        """The base model's text prompts: the adapter's for ``titles``, followed by each row's
        taste words when there is a `UserPrompt` and a user (NaN rows: no words)."""
        prompts = self.adapter.prompts(titles)
        if self.user_prompt is None:
            return prompts
        return self.user_prompt.prompts(prompts, user_embeddings)

    # ---- save / load ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``icg_config.json`` and one ``save_pretrained`` subfolder per part."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory / "meta_tokens")
        self.adapter.save_pretrained(directory / "adapter")
        parts = ["meta_tokens", "adapter"]
        for name in ("refiner", "user_prompt"):
            if getattr(self, name) is not None:
                getattr(self, name).save_pretrained(directory / name)
                parts.append(name)
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "base_model": self.adapter.config.base_model,
            "mllm": self.encoder.config.mllm_name_or_path,
            "parts": parts,
        }
        (directory / ICG_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @staticmethod
    def read_config(directory: str | Path) -> dict:
        """Read and check ``icg_config.json``."""
        file = Path(directory) / ICG_CONFIG_NAME
        if not file.is_file():
            raise FileNotFoundError(
                f"{directory}: not an ICG adapter directory (no {ICG_CONFIG_NAME})"
            )
        config = read_json_object(file, "the ICG adapter config")
        if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{file}: expected format {FORMAT!r} version {FORMAT_VERSION}, "
                f"got {config.get('format')!r} version {config.get('version')}"
            )
        parts = config.get("parts", [])
        if not isinstance(parts, list) or not set(REQUIRED_PARTS) <= set(parts) <= set(PARTS):
            raise ArtifactError(
                f"{file}: 'parts' must list {REQUIRED_PARTS} (+ 'refiner', 'user_prompt')"
            )
        for key in ("base_model", "mllm"):
            if config.get(key) is not None and not isinstance(config[key], str):
                raise ArtifactError(f"{file}: {key!r} must be a string, got {config[key]!r}")
        return config

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        mllm: nn.Module | str | None = None,
        processor=None,
        torch_dtype: torch.dtype | None = None,
    ) -> ICGModel:
        """Load the trainable parts and attach the MLLM (``mllm``, or the one the config records).

        Args:
            directory: a directory written by :meth:`save_pretrained`.
            mllm: a loaded MLLM (then ``processor`` is required), a name/path, or ``None``.
            processor: the MLLM's processor.
            torch_dtype: dtype for an MLLM loaded by name.
        """

        directory = Path(directory)
        config = cls.read_config(directory)
        classes = {**PART_CLASSES, "adapter": adapter_class(directory / "adapter")}
        for part in config["parts"]:  # every part checked before the MLLM is loaded
            check_module_folder(classes[part], directory / part)
        if mllm is None or isinstance(mllm, str):
            name = mllm or config["mllm"]
            if name is None:
                raise ValueError(f"{directory}: the config records no MLLM; pass mllm=")
            mllm, loaded = load_mllm(resolve_model_path(name), torch_dtype=torch_dtype)
            processor = processor or loaded
        encoder = MetaTokenEncoder.load(directory / "meta_tokens", mllm=mllm, processor=processor)
        adapter = classes["adapter"].from_pretrained(directory / "adapter")
        refiner = None
        if "refiner" in config["parts"]:  # recorded: a missing folder is an error, not "no user"
            refiner = UserRefiner.from_pretrained(directory / "refiner")
        user_prompt = None
        if "user_prompt" in config["parts"]:
            user_prompt = UserPrompt.from_pretrained(directory / "user_prompt")
        return cls(encoder, adapter, refiner, user_prompt)
