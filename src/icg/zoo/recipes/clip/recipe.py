"""The `clip` training recipe: setup → train → save_checkpoint → publish → gates → card."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo.recipes import _base
from icg.zoo.recipes.clip.config import ClipRecipeConfig
from icg.zoo.recipes.clip.gates import THRESHOLDS, measure
from icg.zoo.recipes.clip.losses import class_prompt_loss, multi_positive_clip_loss
from icg.zoo.recipes.clip.model import (
    MAX_TOKENS,
    TOKENIZER_SEED_OFFSET,
    build_model,
    build_processor,
    image_embeds,
    text_embeds,
)
from icg.zoo.recipes.clip.texts import (
    MOTIF_PROMPT,
    PALETTE_PROMPT,
    class_prompts,
    defect_flags,
    make_text,
    match_matrix,
)
from icg.zoo.tokenization import write_vocab_merges

logger = logging.getLogger(__name__)

SEED_OFFSET = 0  # zoo_seed(SEED_OFFSET + step) renders the batch of `step`


def batch(step: int, cfg: ClipRecipeConfig, tokenizer) -> dict[str, torch.Tensor]:
    """The training batch of `step`: a pure function of the step."""
    s = sample_covers(cfg.batch_size, seed=zoo_seed(SEED_OFFSET + step))
    rng = np.random.default_rng(zoo_seed(SEED_OFFSET + step))
    flags = np.stack([defect_flags(spec.defects) for spec in s.specs])  # (B, 3)
    texts, keys = zip(
        *(
            make_text(rng, s.titles[i], s.motif[i], s.palette[i], s.style[i], flags[i])
            for i in range(len(s.titles))
        ),
        strict=True,
    )
    attrs = np.concatenate([s.motif[:, None], s.palette[:, None], s.style, flags], axis=1)  # (B, K)
    tok = tokenizer(
        list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
    )
    return {
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
        "pixel_values": _base.images_to_tensor(s.images),
        "match": match_matrix(np.stack(keys), attrs),
        "targets": torch.from_numpy(attrs),  # (B, G): one level per attribute group
    }


def train(out: Path, *, resume: bool, seed: int, config: ClipRecipeConfig | None = None) -> None:
    """Train coverworld-tiny `clip` into `out` (a save_pretrained folder + card + gates.json)."""
    cfg = config or ClipRecipeConfig()
    out = Path(out)
    _base.setup_torch(seed)
    processor, vocab, merges = build_processor(cfg.vocab_size, cfg.tokenizer_titles)
    tokenizer = processor.tokenizer
    model = build_model(cfg, tokenizer)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
        betas=(0.9, 0.98),
    )
    state = (_base.resume_progress(out, model, optimizer) if resume else None) or _base.Progress()
    timer = _base.Timer(before=state.elapsed_s)
    logger.info(
        "clip: %d parameters, steps %d..%d", _base.count_parameters(model), state.step, cfg.steps
    )
    prompts = tokenizer(class_prompts(), padding=True, return_tensors="pt")
    model.train()
    bar = _base.progress(cfg.steps, state.step, "clip")
    while state.step < cfg.steps:
        lr = _base.cosine_lr(state.step, cfg.steps, cfg.learning_rate, cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        b = batch(state.step, cfg, tokenizer)
        text = text_embeds(model, b["input_ids"], b["attention_mask"])  # (T, P)
        image = image_embeds(model, b["pixel_values"])  # (I, P)
        scale = model.logit_scale.exp().clamp(max=100.0)
        loss = multi_positive_clip_loss(scale * text @ image.T, b["match"])  # (T, I) logits
        classes = text_embeds(model, prompts["input_ids"], prompts["attention_mask"])  # (C, P)
        aux = class_prompt_loss(scale * image @ classes.T, b["targets"])  # (B, C) logits
        loss = loss + cfg.class_prompt_weight * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}", refresh=False)
        if state.step % 10 == 0:
            state.history.append((state.step, float(loss.item())))
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            state.elapsed_s = timer.total()
            _base.save_progress(out, model, optimizer, state)
            model.train()
    bar.close()
    _publish(out, model, processor, vocab, merges, cfg, timer.total())


def _publish(
    out: Path, model, processor, vocab, merges, cfg: ClipRecipeConfig, train_s: float
) -> None:
    """Save the final folder atomically, measure the gates on fresh renders, write the card."""
    model.eval()

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder))
        processor.save_pretrained(str(folder))
        write_vocab_merges(folder, vocab, merges)

    done = _base.publish_with_gates(
        out,
        "clip",
        model,
        write,
        measure,
        cfg.gate_items,
        THRESHOLDS,
        train_s,
    )
    metrics, params, wall = done.metrics, done.parameters, done.wall_time_s
    _base.write_card(
        out,
        name="clip",
        summary=(
            "A tiny CLIP (ViT 64px/16 image tower, 64-wide text tower) trained contrastively on "
            "CoverWorld covers and their titles/prompts, plus a class-prompt loss over motif, "
            "palette, the six style dimensions and three defects, so the image embedding carries "
            "content, style and quality. The text tower's hidden size is 64: "
            "the `sd` UNet cross-attends to its last hidden states."
        ),
        loading="""
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

model = CLIPModel.from_pretrained(path)
tokenizer = CLIPTokenizer.from_pretrained(path)  # or AutoTokenizer / vocab.json + merges.txt
processor = CLIPProcessor.from_pretrained(path)  # 64x64 covers, OpenAI CLIP normalisation
""",
        data=(
            f"{cfg.steps} × {cfg.batch_size} renders from `sample_covers(seed=zoo_seed(k))`, "
            f"k = {SEED_OFFSET}..{SEED_OFFSET + cfg.steps - 1} (25% defect rate), each paired with "
            "one text: its messy title (44%), motif/palette prompts, a style description, or its "
            "image quality (blurry / noisy / faded / clean and sharp). "
            "The BPE (CLIP format, `</w>` suffix, lowercase) is trained on "
            f"{2 * cfg.tokenizer_titles} titles and prompts "
            f"of zoo seed {zoo_seed(TOKENIZER_SEED_OFFSET)}."
        ),
        recipe=(
            "multi-positive symmetric InfoNCE + UniCL-style cross-entropy against the 16 class "
            "prompts, AdamW, cosine schedule, 1 CPU thread"
        ),
        config=cfg.model_dump(),
        parameters=params,
        gates=metrics,
        thresholds=THRESHOLDS,
        gate_data=f"{done.gate_source}; prompts '{MOTIF_PROMPT}' and '{PALETTE_PROMPT}'",
        wall_time_s=wall,
    )
    logger.info("clip gates: %s", metrics)
