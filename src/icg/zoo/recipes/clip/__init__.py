"""Recipe of coverworld-tiny `clip`: a tiny transformers CLIPModel trained on CoverWorld renders.

setup (BPE tokenizer on zoo titles + prompts, model) → contrastive training on (text, cover)
pairs with a multi-positive InfoNCE (a text such as "a red cover" matches every red cover in
the batch; Radford et al. 2021 Sec. 2.3 with soft targets) → save_pretrained → gates → card.

The text tower's hidden size is fixed at 64: the `sd` UNet uses its hidden states as
cross-attention context (`cross_attention_dim = 64`).

- `texts`: training texts and the attributes they pin; class prompts.
- `losses`: multi-positive InfoNCE and the class-prompt loss.
- `model`: tokenizer corpus, processor, model and embeddings.
- `gates`: zero-shot gates, `measure`, `evaluate`.
- `recipe`: batches and the training loop (`train`).
"""

from icg.zoo.recipes.clip.config import ClipRecipeConfig
from icg.zoo.recipes.clip.gates import THRESHOLDS, evaluate, measure
from icg.zoo.recipes.clip.model import image_embeds, text_embeds
from icg.zoo.recipes.clip.recipe import train

__all__ = [
    "THRESHOLDS",
    "ClipRecipeConfig",
    "evaluate",
    "image_embeds",
    "measure",
    "text_embeds",
    "train",
]
