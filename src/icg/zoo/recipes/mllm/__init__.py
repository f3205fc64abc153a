"""Recipe of coverworld-tiny `mllm`: a tiny LLaVA (CLIP ViT + Qwen2 LM) that describes covers.

Known limit of the shipped model: its vision tower, trained from scratch, reads palette and
style but not motif shape, so the motif it names comes from the title. Starting the tower from
`clip`'s image tower (``vision_from_pretrained="zoo:clip"``, as LLaVA starts from CLIP) is an
option, off by default because it did not beat training from scratch.

The architecture is transformers' `LlavaForConditionalGeneration` with a `CLIPVisionModel`
tower (64px, patch 16: 16 image tokens) and a `Qwen2ForCausalLM` language model, with a
`LlavaProcessor` (CLIPImageProcessor + Qwen2Tokenizer with a ChatML template). Why not the
Qwen2-VL classes: in transformers 5.x `Qwen2VLProcessor` needs a video processor, which needs
torchvision, which icg does not depend on.

setup (BPE on chat transcripts, model) → teacher-forced LM loss on the assistant answer
("motif: star. palette: blue. style: dark vivid large center thin flat.") for (title, cover)
prompts → save_pretrained → gates (greedy generation) → card.

- `chat`: the conversation, answers and their parsing, label masks.
- `model`: processor (BPE + ChatML template), model, vision tower from a `clip`.
- `gates`: greedy answers, `measure`, `evaluate`.
- `recipe`: batches and the training loop (`train`).
"""

from icg.zoo.recipes.mllm.config import MllmRecipeConfig
from icg.zoo.recipes.mllm.gates import THRESHOLDS, evaluate, measure
from icg.zoo.recipes.mllm.recipe import train

__all__ = ["THRESHOLDS", "MllmRecipeConfig", "evaluate", "measure", "train"]
