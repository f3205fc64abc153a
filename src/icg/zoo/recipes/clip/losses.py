"""The two losses of the `clip` recipe: multi-positive InfoNCE and the class-prompt loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from icg.zoo.recipes.clip.texts import ATTRIBUTE_GROUPS


def multi_positive_clip_loss(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with uniform soft targets over every matching pair.

    Args:
        logits: (T, I) scaled text-image similarities; the diagonal pairs match by construction.
        match: bool (T, I).
    """
    target = match.float()
    t2i = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    i2t = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return 0.5 * (t2i + i2t)


def class_prompt_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every image against each group of class prompts (UniCL, Yang et al.
    2022, Sec. 3): motif + palette, plus the mean over the style and defect groups.

    Args:
        logits: (B, C) scaled similarities to `class_prompts()`.
        targets: (B, G) level index per attribute group, in `ATTRIBUTE_GROUPS` order.
    """
    losses = []
    start = 0
    for g, (_, prompts) in enumerate(ATTRIBUTE_GROUPS):
        losses.append(F.cross_entropy(logits[:, start : start + len(prompts)], targets[:, g]))
        start += len(prompts)
    return losses[0] + losses[1] + torch.stack(losses[2:]).mean()
