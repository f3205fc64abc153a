"""coverworld-tiny `sd`: a Stable-Diffusion-format directory trained on CoverWorld renders.

The recipe reads as setup -> train -> save_checkpoint -> publish, in four resumable phases:

1. ``vae`` (`vae.train_vae`): an ``AutoencoderKL`` (64px RGB <-> 16x16x4 latents) on fresh zoo
   renders every step, L1 + L2 + edge reconstruction and a small KL; then the latents are
   standardised per channel (the affine map is folded into ``quant_conv`` and undone in
   ``post_quant_conv``), so ``scaling_factor`` stays 1 (1 / std of the latents is measured only
   as a check).
2. ``latents`` (`unet.unet_data`): a fixed set of zoo renders is encoded once (posterior mode x
   scaling_factor) and its prompts are run once through the frozen tiny CLIP text tower:
   ``"a cover for <title>"``, most of them followed by words for some of the cover's style
   levels (``config.caption_for``), so that text controls style as well as content.
3. ``unet`` (`unet.train_unet`): a ``UNet2DConditionModel`` on the cached latents, v-prediction
   on a cosine schedule (zero terminal SNR, so sampling from pure noise matches training),
   min-SNR loss weighting, and the prompt dropped to ``""`` for classifier-free guidance; the EMA
   weights are shipped.
4. ``decoder`` (`vae.finetune_decoder`): the VAE decoder is fine-tuned with the encoder frozen,
   so the latent space the UNet learned stays exactly the same.

Finally (`recipe.publish`) the parts are assembled with ``StableDiffusionPipeline.save_pretrained``
(DDIM scheduler with trailing spacing, no safety checker), the gates are measured
(`gates.measure`) and ``gates.json`` and a model card are written.

Every phase checkpoints atomically in the layout of `icg.checkpoints` into a work folder outside
the shipped weights (`state.default_work_dir`), so ``train(out, resume=True)`` continues where a
run stopped. Data seeds come from ``icg.world.seeds.zoo_seed`` only, never from world or oracle
ranges.

Run in the background::

    python -m icg.zoo.recipes.sd --out src/icg/zoo/weights/sd --resume

``--vae-from DIR`` reuses a published folder's VAE and text tower and trains the latents and the
UNet only (`recipe.adopt_vae`): how v2 was made from v1.
"""

from icg.zoo.recipes.sd.config import SDRecipeConfig
from icg.zoo.recipes.sd.gates import THRESHOLDS, evaluate, measure
from icg.zoo.recipes.sd.recipe import main, train

__all__ = ["THRESHOLDS", "SDRecipeConfig", "evaluate", "main", "measure", "train"]
