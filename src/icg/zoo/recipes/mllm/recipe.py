"""The `mllm` training recipe: setup → train → save_checkpoint → publish → gates → card."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from icg.world.attributes import MOTIFS
from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo.recipes import _base
from icg.zoo.recipes.mllm.chat import answer_text, encode
from icg.zoo.recipes.mllm.config import MllmRecipeConfig
from icg.zoo.recipes.mllm.gates import BLANK_IMAGE_VALUE, TARGETS, THRESHOLDS, measure
from icg.zoo.recipes.mllm.model import (
    TOKENIZER_SEED_OFFSET,
    build_model,
    build_processor,
    image_seq_length,
    init_vision_from_clip,
)
from icg.zoo.registry import resolve

logger = logging.getLogger(__name__)

SEED_OFFSET = 2_000_000  # zoo_seed(SEED_OFFSET + step) renders the batch of LM step `step`
VISION_SEED_OFFSET = 2_500_000  # zoo_seed(VISION_SEED_OFFSET + step): vision warm-up step


def batch(step: int, cfg: MllmRecipeConfig, processor) -> dict:
    """The training batch of `step`: a pure function of the step.

    A `title_dropout` share of the titles is blank: the answer must then come from the cover;
    an `image_dropout` share of the covers (never both for one example) is flat grey.
    """
    s = sample_covers(cfg.batch_size, seed=zoo_seed(SEED_OFFSET + step))
    answers = [answer_text(s.motif[i], s.palette[i], s.style[i]) for i in range(len(s.titles))]
    u = np.random.default_rng([SEED_OFFSET, step]).random(len(s.titles))
    titles = ["" if x < cfg.title_dropout else t for t, x in zip(s.titles, u, strict=True)]
    grey = u >= 1.0 - cfg.image_dropout  # (N,): disjoint from the blank titles
    images = np.where(grey[:, None, None, None], np.uint8(BLANK_IMAGE_VALUE), s.images)
    return encode(processor, images, titles, answers)


def vision_batch(step: int, cfg: MllmRecipeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (N, 3, 64, 64) and true motifs (N,) of vision warm-up step `step`."""
    s = sample_covers(cfg.vision_warmup_batch, seed=zoo_seed(VISION_SEED_OFFSET + step))
    return _base.images_to_tensor(s.images), torch.from_numpy(s.motif).long()


def param_groups(model, head: torch.nn.Module, cfg: MllmRecipeConfig) -> list[dict]:
    """AdamW groups: the decoder ("text"), the projector, the vision tower ("vision") and the
    warm-up's motif head ("head"), each split into decayed matrices and the rest. With
    `train_text` False the decoder is frozen and left out."""
    parts: dict[str, list] = {"text": [], "projector": [], "vision": []}
    for n, p in model.named_parameters():
        part = "vision" if "vision_tower" in n else "text"
        parts["projector" if "multi_modal_projector" in n else part].append((n, p))
    if not cfg.train_text:
        for _, p in parts.pop("text"):
            p.requires_grad_(False)
    parts["head"] = list(head.named_parameters())
    groups = []
    for part, named in parts.items():
        for decay in (True, False):
            params = [p for n, p in named if (p.ndim >= 2 and "embed" not in n) == decay]
            groups.append(
                {"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "part": part}
            )
    return groups


def setup_model(cfg: MllmRecipeConfig):
    """(processor, model): a fresh model (its vision tower from `vision_from_pretrained`), or
    the published `init_from` with `vision_feature_select_strategy` applied."""
    if cfg.init_from is None:
        processor = build_processor(
            cfg.vocab_size, cfg.tokenizer_titles, cfg.vision_feature_select_strategy
        )
        model = build_model(cfg, processor.tokenizer)
        if cfg.vision_from_pretrained is not None:
            init_vision_from_clip(model, resolve(cfg.vision_from_pretrained))
        return processor, model

    path = resolve(cfg.init_from)
    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path)
    strategy = cfg.vision_feature_select_strategy
    processor.vision_feature_select_strategy = strategy
    model.config.vision_feature_select_strategy = strategy
    model.config.image_seq_length = image_seq_length(strategy)
    return processor, model


def train(out: Path, *, resume: bool, seed: int, config: MllmRecipeConfig | None = None) -> None:
    """Train coverworld-tiny `mllm` into `out` (a save_pretrained folder + card + gates.json)."""
    cfg = config or MllmRecipeConfig()
    out = Path(out)
    _base.setup_torch(seed, cfg.threads)
    processor, model = setup_model(cfg)
    width = model.config.vision_config.hidden_size
    head = torch.nn.Linear(width, len(MOTIFS))  # warm-up only, not published
    trained = torch.nn.ModuleDict({"model": model, "motif_head": head})  # what checkpoints hold
    optimizer = torch.optim.AdamW(param_groups(model, head, cfg), betas=(0.9, 0.98))
    state = (_base.resume_progress(out, trained, optimizer) if resume else None) or _base.Progress()
    timer = _base.Timer(before=state.elapsed_s)
    total = cfg.vision_warmup_steps + cfg.steps
    pretrained = cfg.init_from or cfg.vision_from_pretrained
    vision_scale = cfg.vision_learning_rate_scale if pretrained else 1.0
    logger.info(
        "mllm: %d parameters, steps %d..%d (%d vision warm-up)",
        _base.count_parameters(model), state.step, total, cfg.vision_warmup_steps,
    )  # fmt: skip
    model.train()
    bar = _base.progress(total, state.step, "mllm")
    while state.step < total:
        if state.step < cfg.vision_warmup_steps:  # the tower alone, as a motif classifier
            lr = _base.cosine_lr(
                state.step, cfg.vision_warmup_steps, cfg.vision_warmup_learning_rate, cfg.warmup
            )
            rates = {"text": 0.0, "projector": 0.0, "vision": lr, "head": lr}
            pixels, motif = vision_batch(state.step, cfg)
            pooled = model.model.vision_tower(pixel_values=pixels).pooler_output
            loss = torch.nn.functional.cross_entropy(head(pooled), motif)
        else:
            k = state.step - cfg.vision_warmup_steps
            lr = _base.cosine_lr(k, cfg.steps, cfg.learning_rate, cfg.warmup)
            rates = {"text": lr, "projector": lr, "vision": lr * vision_scale, "head": 0.0}
            loss = model(**batch(cfg.first_batch + k, cfg, processor)).loss
        for group in optimizer.param_groups:
            group["lr"] = rates[group["part"]]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        optimizer.step()
        state.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}", refresh=False)
        if state.step % 10 == 0:
            state.history.append((state.step, float(loss.item())))
        if state.step % cfg.checkpoint_every == 0 or state.step == total:
            state.elapsed_s = timer.total()
            _base.save_progress(out, trained, optimizer, state)
            model.train()
    bar.close()
    _publish(out, model, processor, cfg, timer.total())


def _publish(out: Path, model, processor, cfg: MllmRecipeConfig, train_s: float) -> None:
    """Save the final folder atomically, measure the gates on fresh renders, write the card."""
    model.eval()

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder))
        processor.save_pretrained(str(folder))

    done = _base.publish_with_gates(
        out, "mllm", model, write, measure, cfg.gate_items, THRESHOLDS, train_s, targets=TARGETS
    )
    write_card(out, cfg, done)
    logger.info("mllm gates: %s", done.metrics)


def _origin(cfg: MllmRecipeConfig) -> str:
    """The model card's sentences on where the weights start and what trains."""
    warmup = (
        f"; the vision tower is fine-tuned alone as a motif classifier for "
        f"{cfg.vision_warmup_steps} steps before the LM training"
        if cfg.vision_warmup_steps
        else ""
    )
    if cfg.init_from:
        start = f"It starts from `{cfg.init_from}` (weights and processor){warmup}"
        if not cfg.train_text:
            start += "; its decoder is frozen: only the vision tower and the projector train"
    elif cfg.vision_from_pretrained:
        start = f"Its vision tower starts from `{cfg.vision_from_pretrained}`'s image tower{warmup}"
    else:
        return "Its vision tower is trained from scratch. "
    return (
        f"{start}. It reads the motif from the cover and from the title, each alone and both "
        "together (`image_only_motif`, `title_only_motif`, `both_motif` in gates.json). "
    )


def write_card(out: Path, cfg: MllmRecipeConfig, done: _base.Published) -> None:
    """The model card of a published `mllm` folder, from its measured gates."""
    metrics, params, wall = done.metrics, done.parameters, done.wall_time_s
    _base.write_card(
        out,
        name="mllm",
        summary=(
            "A tiny LLaVA-architecture image-text-to-text model (CLIP ViT 64px/16 → "
            + ("CLS + 16 patch" if cfg.vision_feature_select_strategy == "full" else "16 patch")
            + " image tokens, 2-layer GELU projector, Qwen2 decoder) that reads a cover and its "
            "title and answers `motif: star. palette: blue. style: dark vivid large center thin flat.` "
            + _origin(cfg)
            + "ICG's meta tokens read its hidden states."
        ),
        loading="""
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained(path)  # LlavaForConditionalGeneration
processor = AutoProcessor.from_pretrained(path)  # LlavaProcessor (ChatML template)
chat = [
    {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "text", "text": "title: The Azure Star\\ndescribe the cover."},
        ],
    }
]
prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
inputs = processor(images=[image], text=[prompt], return_tensors="pt")
answer = processor.batch_decode(
    model.generate(**inputs)[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
)
""",
        data=(
            f"{cfg.steps} × {cfg.batch_size} renders from `sample_covers(seed=zoo_seed(k))`, "
            f"k = {SEED_OFFSET + cfg.first_batch}..{SEED_OFFSET + cfg.first_batch + cfg.steps - 1} (25% defect rate) with their messy "
            f"titles ({cfg.title_dropout:.0%} blanked, so the motif must be read off the cover; "
            f"{cfg.image_dropout:.0%} of the covers replaced by flat grey, so the title is read "
            "too); the answer is written from the render's true motif, palette and style. The "
            f"BPE (Qwen2 format) is trained on {cfg.tokenizer_titles} transcripts of zoo seed {zoo_seed(TOKENIZER_SEED_OFFSET)}."
        ),
        recipe=(
            (
                f"{cfg.vision_warmup_steps} steps of the vision tower alone (cross-entropy of a "
                "linear motif head on its pooled output, dropped afterwards), then the "
                if cfg.vision_warmup_steps
                else ""
            )
            + "teacher-forced LM loss on the answer tokens only; AdamW, cosine schedules"
        ),
        config=cfg.model_dump(),
        parameters=params,
        gates=metrics,
        thresholds=THRESHOLDS,
        gate_data=f"{done.gate_source}; greedy generation from (title, cover), answers parsed",
        wall_time_s=wall,
    )
