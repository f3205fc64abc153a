"""coverworld-tiny `flow`: a Stable-Diffusion-3-format base (MMDiT, flow matching).

The recipe reads as setup -> train -> save_checkpoint -> publish:

1. setup (`recipe.setup`): the published `sd` VAE and the `clip` text tower (as SD3's
   ``CLIPTextModelWithProjection``, in both CLIP slots; no T5) are copied once into the work
   folder (`models.frozen_vae`, `models.frozen_text_tower`); the `sd` UNet phase's covers and
   prompts (`icg.zoo.recipes.sd.unet.render_chunk`: same zoo seeds, same style captions) are
   encoded once (`data.flow_data`).
2. train (`loop.train_transformer`): a fresh ``SD3Transformer2DModel`` (adaLN-Zero init) on
   the rectified-flow velocity at SD3's logit-normal timesteps through the scheduler's sigma
   table, the prompt dropped to ``""`` for classifier-free guidance, conditioned exactly as
   ``StableDiffusion3Pipeline.encode_prompt`` conditions it (`data.sd3_text`); the EMA weights
   are shipped. Checkpoints (``<work>/transformer_ckpt``, the layout of `icg.checkpoints`) make
   ``train(out, resume=True)`` continue bit-exactly.
3. publish (`recipe.publish`): ``StableDiffusion3Pipeline.save_pretrained``, then the gates of
   `gates.measure` (`sd`'s measurements; motif and palette within 0.03 of the title ceiling)
   and ``gates.json`` and a model card.

Run in the background::

    python -m icg.zoo.recipes.flow --out src/icg/zoo/weights/flow --resume

or ``icg zoo train flow --out DIR``. The published folder loads with
``StableDiffusion3Pipeline.from_pretrained`` and is icg's SD3 base (``--base zoo:flow``).
"""

from icg.zoo.recipes.flow.config import FlowRecipeConfig
from icg.zoo.recipes.flow.gates import THRESHOLDS, evaluate, measure
from icg.zoo.recipes.flow.recipe import main, train

__all__ = ["THRESHOLDS", "FlowRecipeConfig", "evaluate", "main", "measure", "train"]
