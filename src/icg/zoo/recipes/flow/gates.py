"""The gates of `flow`: `sd`'s measurements on the SD3 pipeline, gated against the title ceiling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import StableDiffusion3Pipeline

from icg.zoo import evaldata
from icg.zoo.recipes import _base
from icg.zoo.recipes.flow.config import FlowRecipeConfig
from icg.zoo.recipes.sd import gates as sd_gates
from icg.zoo.recipes.sd.pixels import vae_psnr
from icg.zoo.recipes.sd.state import RecipeState

# What a shipped `flow` must pass. A title prompt cannot beat what the title alone says
# (`prompt_*_ceiling`, the Bayes reader of the titles), so motif and palette are gated by their
# distance to it; `prompt_style`: the style named in the prompt is drawn; the round trip is the
# reused `sd` VAE's.
CEILING_MARGIN = 0.03
THRESHOLDS = {
    "prompt_motif_gap": -CEILING_MARGIN,
    "prompt_palette_gap": -CEILING_MARGIN,
    "prompt_style": 0.60,
    "roundtrip_psnr": 26.0,
}
PROTOCOL = (
    "prompt 'a cover for <title>' (prompt_style: followed by the six style levels of a fresh "
    "cover; class_prompt: 'a cover for The <palette> <motif>' of a fresh cover), "
    "FlowMatchEulerDiscreteScheduler {steps} steps, pipeline default guidance (7.0), read by "
    "icg.world.truth.read_attributes; prompt_*_gap: prompt_* minus prompt_*_ceiling, the Bayes "
    "reader of the titles alone; roundtrip: the reused sd VAE's encode(mode)/decode of the "
    "fresh covers, PSNR mean per image"
)


def ceiling_gaps(metrics: dict[str, float]) -> dict[str, float]:
    """``prompt_<kind>_gap = prompt_<kind> - prompt_<kind>_ceiling`` for motif and palette:
    how far the title-prompt draws are below what the titles allow (0 at the ceiling).
    Rounded to 1e-9, so that a gap of exactly the margin is not lost to float subtraction."""
    return {
        f"prompt_{k}_gap": round(metrics[f"prompt_{k}"] - metrics[f"prompt_{k}_ceiling"], 9)
        for k in ("motif", "palette")
    }


def load_pipeline(path: str) -> Any:
    """The stock ``StableDiffusion3Pipeline`` of a `flow` folder. The folder has no T5, which
    diffusers loads only when told (``text_encoder_3=None, tokenizer_3=None``, as its SD3 docs
    drop T5); icg's loaders pass them (`icg.models.base_pipeline.load_base`)."""
    return StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)


def measure(path: str | Path, gate_set: evaldata.GateSet, steps: int = 25) -> dict[str, float]:
    """`icg.zoo.recipes.sd.gates.measure` on the SD3 pipeline at `path`, titles and truth from
    `gate_set`, plus `ceiling_gaps`."""
    metrics = sd_gates.measure(
        path,
        gate_set.titles,
        gate_set.motif,
        gate_set.palette,
        gate_set,
        steps=steps,
        loader=load_pipeline,
    )
    return metrics | ceiling_gaps(metrics)


def evaluate(
    path: str | Path, world_dir: str | Path | None = None, limit: int | None = None
) -> dict[str, float]:
    """Gate metrics of the `flow` pipeline at `path`: as `icg.zoo.recipes.sd.gates.evaluate`
    (a world's item titles and truth when `world_dir` is given, fresh renders otherwise)."""
    fresh = evaldata.fresh_covers(limit or 512)
    if world_dir is None:
        return measure(path, fresh)
    items = evaldata.world_items(Path(world_dir), limit=limit)
    metrics = sd_gates.measure(
        path, items.titles, items.motif, items.palette, fresh, loader=load_pipeline
    )
    metrics |= ceiling_gaps(metrics)
    metrics["roundtrip_psnr_world_items"] = vae_psnr(load_pipeline(str(path)).vae, items.images)
    return metrics


def write_report(
    out: Path,
    cfg: FlowRecipeConfig,
    metrics: dict[str, float],
    wall: dict[str, float],
    params: dict[str, int],
    gate_data: str,
    state: RecipeState,
) -> None:
    """Write ``gates.json`` and the model card README.md of the published folder."""
    reused = state.get("sources", "")
    record = _base.gate_record(
        "flow",
        metrics,
        THRESHOLDS,
        sum(params.values()),
        wall["total_s"],
        gate_data,
        parameters_by_part=params,
        trained_parts=["transformer"],
        reused_parts=reused,
        wall_time_by_phase_s={k: round(v, 1) for k, v in wall.items()},
        protocol=PROTOCOL.format(steps=cfg.gate_steps),
        transformer_steps_done=state.get("published_step", cfg.steps),
    )
    _base.write_gates(out, record)
    _base.write_card(
        out,
        name="flow",
        summary=_summary(cfg, reused)
        + f"\n\nTrained: the transformer's {params['transformer']:,} parameters, "
        f"{state.get('published_step', cfg.steps)} of {cfg.steps} steps.",
        loading=(
            "from diffusers import StableDiffusion3Pipeline\n"
            "# no T5 in this folder: diffusers loads it when told so\n"
            "pipe = StableDiffusion3Pipeline.from_pretrained(\n"
            "    PATH, text_encoder_3=None, tokenizer_3=None\n"
            ")\n"
            'image = pipe("a cover for The Crimson Orb", num_inference_steps=25).images[0]'
        ),
        data=(
            "The `sd` UNet phase's data (`icg.zoo.recipes.sd.unet.render_chunk`): "
            f"{cfg.num_latents} cached latents of CoverWorld renders from the zoo seed range "
            f"(defect rate {cfg.defect_rate}) and their titles as prompts `a cover for <title>`; "
            f"{cfg.style_caption_rate:.0%} of the prompts also name some of the cover's style "
            f"levels (`a cover for <title>, dark, a thin frame`); {cfg.cfg_drop:.0%} are dropped "
            "to '' for classifier-free guidance."
        ),
        recipe=(
            "rectified flow (velocity MSE) at SD3's logit-normal timesteps "
            f"(mean {cfg.logit_mean:g}, std {cfg.logit_std:g}) through the scheduler's sigma "
            f"table (shift {cfg.shift:g}), adaLN-Zero initialisation, AdamW, EMA weights shipped; "
            "only the transformer is trained; wall time per phase: "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in wall.items())
        ),
        config=cfg.model_dump(),
        parameters=sum(params.values()),
        gates={k: v for k, v in metrics.items() if k in THRESHOLDS},
        thresholds=THRESHOLDS,
        gate_data=gate_data,
        wall_time_s=wall["total_s"],
    )


def _summary(cfg: FlowRecipeConfig, reused: str) -> str:
    return (
        "A tiny Stable-Diffusion-3-format pipeline (MMDiT, flow matching) for 64x64 CoverWorld "
        f"covers: an `SD3Transformer2DModel` ({cfg.num_layers} joint blocks, width {cfg.width}, "
        f"patch {cfg.patch_size}, qk norm {cfg.qk_norm}) trained here; the coverworld-tiny `sd` "
        "VAE reused as it is (its latents are standardised inside the VAE: scaling_factor 1, "
        "shift_factor 0); the coverworld-tiny `clip` text tower with its trained "
        "text_projection, as a `CLIPTextModelWithProjection`, in both of SD3's CLIP slots "
        "(`text_encoder` and `text_encoder_2` hold the same weights: the zoo has one tower); "
        "no T5 (`text_encoder_3` is None, which the pipeline fills with zero tokens, its "
        "default 256, as in training); a FlowMatchEulerDiscreteScheduler. No safety checker: "
        f"it draws geometric covers only. Reused parts: {reused}."
    )
