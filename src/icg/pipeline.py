"""ICGPipeline: personalized cover generation on top of a stock diffusers pipeline.

ICG (EMNLP 2025, Sec. 3) = item features from the MLLM at meta tokens (cached per item) →
user refiner → cover adapter → decoupled cross-attention in the base UNet. The base pipeline
(``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``) runs unchanged; the ICG tokens
reach the UNet through ``cross_attention_kwargs={ICG_TOKENS_KWARG: ...}``.

Classifier-free guidance: the unconditional branch is the base pipeline's own (empty prompt) with
**zero ICG tokens**. Since ``to_v_icg`` has no bias, zero tokens contribute exactly nothing, so
the unconditional prediction is the base model's, and guidance pushes towards both the title
and the personalized context.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoPipelineForImage2Image
from diffusers.utils import BaseOutput
from PIL import Image

from icg.artifacts import refuse_pickle_weights
from icg.config import DEFAULT_GUIDANCE, DEFAULT_STEPS
from icg.data.images import load_image
from icg.models.attention import ICG_TOKENS_KWARG
from icg.models.backbones import backbone_of, batch_has_cfg, denoiser_of
from icg.models.base_pipeline import load_base
from icg.models.denoiser_lora import attach_lora, find_lora, remove_lora
from icg.models.guidance import user_guidance_hook
from icg.models.icg_model import ICGModel

logger = logging.getLogger(__name__)

ImageLike = Image.Image | str | Path | None


@dataclass
class ICGPipelineOutput(BaseOutput):
    """What `ICGPipeline.__call__` returns.

    Args:
        images: ``B`` PIL images (``output_type="pil"``) or an array/tensor of ``B`` covers.
        seeds: the initial seed of each cover's generator (``None`` when none was passed).
        scores: ``(B,)`` the reward of each cover when the call was given a ``reward``.
    """

    images: list[Image.Image] | np.ndarray | torch.Tensor
    seeds: list[int] | None = None
    scores: np.ndarray | None = None


def image_digest(image: Image.Image | None) -> str:
    """A content hash of a PIL image (mode, size and pixels); ``""`` for no image."""
    if image is None:
        return ""
    h = hashlib.sha1(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def cfg_tokens(tokens: torch.Tensor, do_cfg: bool) -> torch.Tensor:
    """ICG tokens for the UNet batch: ``[zeros, tokens]`` under CFG (diffusers' uncond-first order)."""
    return torch.cat([torch.zeros_like(tokens), tokens]) if do_cfg else tokens


def generator_seeds(generator: torch.Generator | Sequence[torch.Generator] | None):
    """The initial seed of each generator (one generator: a one-element list; none: ``None``)."""
    if generator is None:
        return None
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    return [int(g.initial_seed()) for g in generators]


@torch.no_grad()
def score_covers(reward, images, titles: Sequence[str], users: torch.Tensor | None) -> np.ndarray:
    """``(B,)`` rewards of covers: PIL images are scored on their 8-bit pixels (what a client
    receives), arrays ``(B, H, W, 3)`` and tensors ``(B, 3, H, W)`` as floats in [0, 1]."""
    if isinstance(images, list):
        pixels = np.stack([np.asarray(im.convert("RGB")) for im in images])  # (B, H, W, 3)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    elif isinstance(images, np.ndarray):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    else:
        x = images.float()
    values, _ = reward(x, list(titles), users.cpu() if users is not None else None)
    return values.float().cpu().numpy()


class ICGPipeline:
    """Personalized cover generation: a base diffusers pipeline plus an ICG model.

    Args:
        base: a diffusers pipeline of a supported family (`icg.models.backbones`: SD1.x/2.x,
            SDXL, SD3, FLUX), left untouched except for the adapter's attention processors,
            removed again by :meth:`remove_adapter`.
        model: the ICG model (encoder with its MLLM, optional refiner, adapter).
        lora: a stage-B LoRA of the denoiser (``unet_lora.safetensors``) to draw with, added to
            the base's denoiser here and removed again by :meth:`remove_adapter`.
    """

    def __init__(self, base, model: ICGModel, lora: str | Path | None = None) -> None:
        self.base = base
        self.denoiser = denoiser_of(base)  # base.unet, or base.transformer (SD3, FLUX)
        self.tokens_kwargs = backbone_of(base).kwargs_name
        self.lora = Path(lora) if lora is not None else None
        if self.lora is not None:
            attach_lora(self.denoiser, self.lora)
        self.model = model.to(device=self.denoiser.device)
        try:
            self.model.adapter.install(self.denoiser)
        except Exception:
            if self.lora is not None:  # leave the base as it was given
                remove_lora(self.denoiser)
            raise
        self._cache: dict[tuple[str, str, str], torch.Tensor] = {}
        self._img2img = None  # built on first use of strength < 1
        self.items_encoded = 0  # items sent through the MLLM (cache misses)
        self.mllm_calls = 0  # batched MLLM forwards

    @classmethod
    def from_pretrained(
        cls,
        adapter_dir: str | Path,
        base=None,
        mllm=None,
        torch_dtype: torch.dtype | None = None,
    ) -> ICGPipeline:
        """Load an ICG adapter and the base pipeline and MLLM it records (or the ones given), and
        the denoiser LoRA its stage-B run trained, when there is one (`find_lora`).

        Args:
            adapter_dir: a directory written by ``ICGModel.save_pretrained``.
            base: a loaded diffusers pipeline, a name/path (``zoo:NAME`` allowed), or ``None``.
            mllm: a name/path of the MLLM, or ``None`` for the one the adapter records.
            torch_dtype: dtype for the models loaded here.
        """
        refuse_pickle_weights(adapter_dir, "adapter")
        config = ICGModel.read_config(adapter_dir)
        if base is None or isinstance(base, str | Path):
            name = str(base or config["base_model"] or "")
            if not name:
                raise ValueError(f"{adapter_dir}: the config records no base model; pass base=")
            kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
            base = load_base(name, **kwargs)
        model = ICGModel.from_pretrained(adapter_dir, mllm=mllm, torch_dtype=torch_dtype)
        return cls(base, model, lora=find_lora(adapter_dir))

    def save_pretrained(self, directory: str | Path) -> None:
        """Save the ICG adapter (trainable parts only)."""
        self.model.save_pretrained(directory)

    def remove_adapter(self) -> None:
        """Restore the base denoiser: its original attention processors, and no LoRA."""
        self.model.adapter.remove(self.denoiser)
        if self.lora is not None:
            remove_lora(self.denoiser)
            self.lora = None

    def set_feature_cache(self, cache: MutableMapping[tuple[str, str, str], torch.Tensor]) -> None:
        """Keep item features in ``cache`` from now on (a server passes a bounded LRU mapping;
        the default is a dict that grows with the catalogue)."""
        cache.update(self._cache)
        self._cache = cache

    def clear_cache(self) -> None:
        """Forget cached item features."""
        self._cache.clear()

    # ---- items ---------------------------------------------------------------------------
    @staticmethod
    def _load(image: ImageLike) -> Image.Image | None:
        if image is None or isinstance(image, Image.Image):
            return image.convert("RGB") if image is not None and image.mode != "RGB" else image
        return load_image(image)

    @torch.no_grad()
    def encode_items(
        self,
        titles: Sequence[str],
        images: Sequence[ImageLike] | None = None,
        item_keys: Sequence[str] | None = None,
        batch_size: int = 16,
    ) -> torch.Tensor:
        """Item features ``(I, K, D)``, computed once per (item key, title, image hash) and cached.

        Args:
            titles: ``I`` titles.
            images: ``I`` reference images (PIL, path, or ``None``).
            item_keys: ``I`` item ids (default: the title).
            batch_size: items per MLLM forward.
        """
        titles = list(titles)
        images = [self._load(im) for im in images] if images is not None else [None] * len(titles)
        keys = list(item_keys) if item_keys is not None else titles
        if not len(titles) == len(images) == len(keys):
            raise ValueError(
                f"titles/images/item_keys: expected equal lengths, got {len(titles)}/{len(images)}/{len(keys)}"
            )
        cache_keys = [
            (str(k), t, image_digest(im)) for k, t, im in zip(keys, titles, images, strict=True)
        ]
        todo = list(dict.fromkeys(ck for ck in cache_keys if ck not in self._cache))
        first = {ck: i for i, ck in reversed(list(enumerate(cache_keys)))}
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            idx = [first[ck] for ck in chunk]
            feats = self.model.encoder(
                [titles[i] for i in idx], [images[i] for i in idx]
            )  # (b, K, D)
            self.mllm_calls += 1
            self.items_encoded += len(chunk)
            for ck, f in zip(chunk, feats, strict=True):
                self._cache[ck] = f
        return torch.stack([self._cache[ck] for ck in cache_keys])  # (I, K, D)

    # ---- generation ----------------------------------------------------------------------
    def _do_cfg(self, guidance_scale: float) -> bool:
        return batch_has_cfg(self.base, guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        titles: str | Sequence[str],
        images: ImageLike | Sequence[ImageLike] = None,
        user_embeddings: torch.Tensor | None = None,
        item_keys: Sequence[str] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        icg_scale: float | None = None,
        strength: float = 1.0,
        user_guidance: float = 1.0,
        reward=None,
        prompt: str | None = None,
        **base_kwargs,
    ) -> ICGPipelineOutput:
        """Generate one cover per title.

        Args:
            titles: ``B`` item titles (the base prompt is ``model.prompts(titles, users)``: the
                adapter's prompt, with the user's taste words when the model has a UserPrompt).
            images: ``B`` reference images, or ``None``.
            user_embeddings: ``(B, user_dim)`` user embeddings (NaN row or ``None``: no user).
            item_keys: ``B`` item ids for the feature cache.
            num_inference_steps, guidance_scale: sampling (default: `icg.config`'s
                ``DEFAULT_STEPS`` and ``DEFAULT_GUIDANCE``, what the recipe trains with).
            generator, output_type, height, width, negative_prompt: as in diffusers.
            icg_scale: weight of the ICG branch for this call (default: the adapter's).
            strength: 1 draws from pure noise; below 1 starts from each item's reference image
                noised to this fraction of the schedule (diffusers' image-to-image pipeline,
                sharing this UNet and its ICG processors).
            user_guidance: ``w_u`` of user guidance (`icg.models.guidance`): 1 is the plain
                personalized draw, 0 the draw without the user (bit for bit), above 1 pushes
                further towards the user. Costs one more UNet pass per step when not 0 or 1.
            reward: a `Reward` or `MultiReward` (``forward(images, titles, users)``) that scores
                the covers (on the 8-bit pixels of PIL output): ``scores`` of the output.
            prompt: one text prompt for every cover instead of ``model.prompts(titles, users)``
                (``""``: the ICG tokens alone carry the cover, as the pretrained adapter's gates
                draw).

        Returns:
            An `ICGPipelineOutput`: ``images`` (PIL list or array/tensor), ``seeds`` (each
            generator's initial seed), ``scores`` (with ``reward``).
        """
        if isinstance(titles, str):
            titles = [titles]
            images = [images]
        titles = list(titles)
        features = self.encode_items(titles, images, item_keys)  # (B, K, D)
        unet = self.denoiser
        device = unet.device
        features = features.to(device)
        if user_embeddings is not None and user_guidance != 0:
            user_embeddings = torch.as_tensor(user_embeddings).to(device)
        else:
            user_embeddings = None
        do_cfg = self._do_cfg(guidance_scale)
        tokens = cfg_tokens(self.model(features, user_embeddings), do_cfg).to(unet.dtype)
        guide = contextlib.nullcontext()
        if user_embeddings is not None and user_guidance != 1:
            without = cfg_tokens(self.model(features), do_cfg).to(unet.dtype)  # (B', K', T)
            guide = user_guidance_hook(unet, without, user_guidance, self.tokens_kwargs)
        previous = self.model.adapter.scale
        if icg_scale is not None:
            self.model.adapter.set_scale(icg_scale)
        base = self.base
        if strength >= 1.0:
            base_kwargs = {**base_kwargs, "height": height, "width": width}
        else:
            missing = [
                t
                for t, im in zip(titles, images or [None] * len(titles), strict=True)
                if im is None
            ]
            if missing:
                raise ValueError(
                    f"strength={strength} needs a reference image; none for {missing[:3]}"
                )
            base = self._image_to_image()
            base_kwargs = {
                **base_kwargs,
                "image": [self._load(im) for im in images],
                "strength": strength,
            }
        try:
            with guide:
                out = base(
                    prompt=self.model.prompts(titles, user_embeddings)
                    if prompt is None
                    else [prompt] * len(titles),
                    negative_prompt=negative_prompt,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    generator=generator,
                    output_type=output_type,
                    **{self.tokens_kwargs: {ICG_TOKENS_KWARG: tokens}},
                    **base_kwargs,
                )
        finally:
            self.model.adapter.set_scale(previous)
        scores = None
        if reward is not None:
            scores = score_covers(reward, out.images, titles, user_embeddings)
        return ICGPipelineOutput(images=out.images, seeds=generator_seeds(generator), scores=scores)

    def _image_to_image(self):
        if self._img2img is None:
            self._img2img = AutoPipelineForImage2Image.from_pipe(self.base)
            self._img2img.set_progress_bar_config(**getattr(self.base, "_progress_bar_config", {}))
        return self._img2img

    def generate_grid(
        self,
        titles: Sequence[str],
        images: Sequence[ImageLike] | None = None,
        user_embeddings: torch.Tensor | None = None,
        item_keys: Sequence[str] | None = None,
        seed: int = 0,
        **kwargs,
    ) -> list[list]:
        """Covers for every (user, item) pair: ``grid[u][i]``.

        Item features are computed once per item (I MLLM item forwards for U × I covers). Every
        user row starts from the same noise (``seed``), so differences between rows come from
        the user alone.

        Args:
            titles: ``I`` item titles.
            images: ``I`` reference images or ``None``.
            user_embeddings: ``(U, user_dim)``; ``None`` gives one non-personalized row.
            item_keys: ``I`` item ids.
            seed: noise seed shared by all rows.
            **kwargs: passed to :meth:`__call__`.
        """
        titles = list(titles)
        self.encode_items(titles, images, item_keys)  # warm the cache once
        users = [None] if user_embeddings is None else list(torch.as_tensor(user_embeddings))
        device = self.denoiser.device
        grid = []
        for user in users:
            generator = torch.Generator(device=device).manual_seed(seed)
            batch_users = None if user is None else user.unsqueeze(0).expand(len(titles), -1)
            out = self(
                titles,
                images,
                user_embeddings=batch_users,
                item_keys=item_keys,
                generator=generator,
                **kwargs,
            )
            grid.append(list(out.images))
        return grid
