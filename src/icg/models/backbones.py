"""Backbone families: which adapter a base diffusion model gets and how its tokens reach it.

A registry, looked up by the denoiser's class (``UNet2DConditionModel`` for SD1.x/2.x/SDXL,
``SD3Transformer2DModel``, ``FluxTransformer2DModel``) or by a saved adapter's ``_class_name``:

============  ==========================  ==================  =============================
family        denoiser                    adapter             tokens travel in
============  ==========================  ==================  =============================
``unet``      ``pipe.unet``               `CoverAdapter`      ``cross_attention_kwargs``
``sd3``       ``pipe.transformer``        `JointCoverAdapter` ``joint_attention_kwargs``
``flux``      ``pipe.transformer``        `JointCoverAdapter` ``joint_attention_kwargs``
============  ==========================  ==================  =============================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from icg.artifacts import ArtifactError, read_json_object
from icg.models.adapter import CoverAdapter
from icg.models.transformer_adapter import JointCoverAdapter


@dataclass(frozen=True)
class Backbone:
    """One family of base models.

    Args:
        name: family name (``unet``, ``sd3``, ``flux``).
        denoiser_class: class name of the denoiser this family covers.
        denoiser_attr: the pipeline attribute holding the denoiser.
        kwargs_name: the denoiser ``forward`` keyword whose dict reaches the attention processors.
        adapter: the adapter class for this family.
        build: builds a fresh adapter for a denoiser (``from_unet`` / ``from_transformer``).
        cfg_in_batch: whether the stock pipeline's classifier-free guidance doubles the batch
            (``[uncond, cond]``); FLUX.1 is guidance-distilled and draws one batch.
    """

    name: str
    denoiser_class: str
    denoiser_attr: str
    kwargs_name: str
    adapter: type[CoverAdapter]
    build: Callable[..., CoverAdapter]
    cfg_in_batch: bool


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Add a family to the registry (by its denoiser's class name)."""
    BACKBONES[backbone.denoiser_class] = backbone
    return backbone


_JOINT = ("transformer", "joint_attention_kwargs", JointCoverAdapter)
_JOINT_BUILD = JointCoverAdapter.from_transformer
register_backbone(
    Backbone(
        "unet",
        "UNet2DConditionModel",
        "unet",
        "cross_attention_kwargs",
        CoverAdapter,
        CoverAdapter.from_unet,
        cfg_in_batch=True,
    )
)
register_backbone(
    Backbone("sd3", "SD3Transformer2DModel", *_JOINT, _JOINT_BUILD, cfg_in_batch=True)
)
register_backbone(
    Backbone("flux", "FluxTransformer2DModel", *_JOINT, _JOINT_BUILD, cfg_in_batch=False)
)

ADAPTER_CLASSES: dict[str, type[CoverAdapter]] = {
    cls.__name__: cls for cls in (CoverAdapter, JointCoverAdapter)
}


def backbone_of(model: nn.Module) -> Backbone:
    """The family of a denoiser (UNet or transformer) or of a pipeline that holds one."""
    for attr in ("unet", "transformer"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
            break
    for cls in type(model).__mro__:
        if cls.__name__ in BACKBONES:
            return BACKBONES[cls.__name__]
    known = ", ".join(sorted(BACKBONES))
    raise ValueError(f"{type(model).__name__}: not a supported diffusion backbone (known: {known})")


def denoiser_of(pipe) -> nn.Module:
    """The pipeline's denoiser (``pipe.unet`` or ``pipe.transformer``)."""
    return getattr(pipe, backbone_of(pipe).denoiser_attr)


def build_adapter(denoiser: nn.Module, **kwargs) -> CoverAdapter:
    """A fresh, zero-initialised adapter of the right family for ``denoiser``; ``kwargs`` as
    `CoverAdapter.from_unet` / `JointCoverAdapter.from_transformer`."""
    return backbone_of(denoiser).build(denoiser, **kwargs)


def adapter_class(directory: str | Path) -> type[CoverAdapter]:
    """The adapter class a saved adapter folder records (``config.json``'s ``_class_name``);
    `CoverAdapter` when there is no config (then its folder check names what is missing)."""
    file = Path(directory) / "config.json"
    if not file.is_file():
        return CoverAdapter
    name = read_json_object(file, "the adapter config").get("_class_name") or "CoverAdapter"
    if name not in ADAPTER_CLASSES:
        raise ArtifactError(
            f"{file}: _class_name {name!r} is not an ICG adapter (known: {sorted(ADAPTER_CLASSES)})"
        )
    return ADAPTER_CLASSES[name]


def batch_has_cfg(pipe, guidance_scale: float) -> bool:
    """Whether ``pipe`` at ``guidance_scale`` runs its denoiser on ``[uncond, cond]`` halves
    (then the ICG tokens must be laid out the same way: `icg.pipeline.cfg_tokens`). Not for
    guidance-distilled denoisers (LCM's ``time_cond_proj_dim``, FLUX.1's guidance embedding)."""
    if not backbone_of(pipe).cfg_in_batch or guidance_scale <= 1.0:
        return False
    return getattr(denoiser_of(pipe).config, "time_cond_proj_dim", None) is None
