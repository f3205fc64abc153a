"""Recipe of coverworld-tiny `icg-adapter`: ICG's meta tokens and adapter, pretrained once.

IP-Adapter (Ye et al. 2023, Sec. 3.3) pretrains its image adapter once per base on image-text
pairs, and its image tokens then steer content and style with any prompt. ICG's adapter was
trained briefly from zero on every platform (stage A), and its draws did not follow the
reference cover. This recipe pretrains it the IP-Adapter way on renders of the zoo seed range:

    setup → train (denoise each cover from its own MLLM features) → save_checkpoint → publish
    (`ICGModel.save_pretrained`) → gates (empty-prompt draws, `gates.measure`) → card

- The MLLM reads the cover with its title through the meta tokens; the adapter's tokens
  condition the frozen base UNet; the loss is stage A's denoising loss
  (`icg.training.common.denoising_loss`).
- The text prompt ``"a cover for <title>"`` is replaced by ``""`` on ``text_dropout`` (70%) of
  the covers, so the adapter must carry motif, palette and style itself.
- No user refiner: no users exist at pretraining, and a refiner trained on random users would
  learn to ignore them. Stage A adds its refiner at its zero gate (the identity), so its first
  forward is this model's (`icg.training.init_adapter`).
- Resumable: the batch of step ``s`` renders ``zoo_seed(4_000_000 + s)`` and its noise comes
  from ``(seed, s)``; checkpoints hold the weights, optimizer, torch RNG and the weight EMA
  (`icg.training.ema`), whose average is published.
- Any base and MLLM by path (``base``, ``mllm``): the recipe needs only images and titles; the
  renders are drawn at the base's resolution.

Cost on a GPU for a real SD1.5 base (an ESTIMATE, not measured): IP-Adapter's SD1.5 run is about
1M steps at batch 8 per GPU on 8 V100s; a useful ICG adapter on a narrow domain needs far
fewer, say 50k steps at batch 32 on 512px images. One step is an SD1.5 UNet forward and
backward at batch 32 (about 0.6 s on one A100 in bf16, diffusers' fine-tuning figures) plus the
MLLM forward and backward to the meta tokens (a 2B Qwen2-VL on 32 covers: about 0.4 s), so
about 1 s a step: 50k steps ≈ 14 GPU-hours on one A100 (a few hundred dollars or less).
"""

from icg.zoo.recipes.icg_adapter.config import IcgAdapterRecipeConfig
from icg.zoo.recipes.icg_adapter.gates import THRESHOLDS, evaluate, gate_metrics, measure
from icg.zoo.recipes.icg_adapter.recipe import train

__all__ = ["THRESHOLDS", "IcgAdapterRecipeConfig", "evaluate", "gate_metrics", "measure", "train"]
