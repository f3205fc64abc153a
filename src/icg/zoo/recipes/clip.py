"""Recipe of coverworld-tiny `clip`: a tiny transformers CLIPModel trained on CoverWorld renders.

setup (BPE tokenizer on zoo titles + prompts, model) → contrastive training on (text, cover)
pairs with a multi-positive InfoNCE (a text such as "a red cover" matches every red cover in
the batch; Radford et al. 2021 Sec. 2.3 with soft targets) → save_pretrained → gates → card.

The text tower's hidden size is fixed at 64: the `sd` UNet uses its hidden states as
cross-attention context (`cross_attention_dim = 64`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icg.world.attributes import MOTIFS, PALETTES, STYLE_DIMS, STYLE_LEVELS, Defects
from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo import evaldata
from icg.zoo.recipes import _base
from icg.zoo.tokenization import train_clip_bpe, write_vocab_merges

logger = logging.getLogger(__name__)

TEXT_HIDDEN = 64  # the sd UNet's cross_attention_dim: do not change
MAX_TOKENS = 32
SEED_OFFSET = 0  # zoo_seed(SEED_OFFSET + step) renders the batch of `step`
TOKENIZER_SEED_OFFSET = 900_000
THRESHOLDS = {"zero_shot_motif_acc": 0.90, "zero_shot_palette_acc": 0.90}
MOTIF_PROMPT = "a cover with a {}"
PALETTE_PROMPT = "a {} cover"


@dataclass
class ClipRecipeConfig:
    """Hyper-parameters of the `clip` recipe (defaults are the shipped model's)."""

    steps: int = 6000
    batch_size: int = 64
    lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.05
    vocab_size: int = 1024
    vision_hidden: int = 96
    patch_size: int = 16  # 16 tokens: a tiny ViT learns motif shape far faster than at 8
    vision_layers: int = 3
    text_layers: int = 3
    heads: int = 4
    projection_dim: int = 64
    checkpoint_every: int = 100
    gate_items: int = 1000
    tokenizer_titles: int = 8_000
    class_prompt_weight: float = 2.0


# attribute columns of a key: motif, palette, the style dims, then the defects (blurred,
# noisy, faded as 0/1); -1 = unspecified. Defect words keep image quality in the embedding,
# which the `aesthetic` model reads.
DEFECTS: tuple[str, ...] = ("blurry", "noisy", "faded")
NUM_KEYS = 2 + len(STYLE_DIMS) + len(DEFECTS)
STYLE_PHRASES: dict[str, str] = {
    "center": "centered",
    "left": "on the left",
    "top": "at the top",
    "none": "no frame",
    "thin": "a thin frame",
    "thick": "a thick frame",
    "flat": "a flat background",
}


def _style_phrase(dim: str, level: int) -> str:
    """Words for one style level, e.g. ("frame", 1) -> "a thin frame"."""
    word = STYLE_LEVELS[dim][level]
    return STYLE_PHRASES.get(word, word)


def defect_flags(defects: Defects) -> np.ndarray:
    """(3,) 0/1: blurred, noisy, faded."""
    return np.array([defects.blur > 0, defects.noise > 0, defects.fade > 0], dtype=np.int64)


def _quality_phrase(flags: np.ndarray) -> str:
    present = [w for w, f in zip(DEFECTS, flags, strict=True) if f]
    return " and ".join(present) if present else "clean and sharp"


def make_text(
    rng: np.random.Generator,
    title: str,
    motif: int,
    palette: int,
    style: np.ndarray,
    defects: np.ndarray,
) -> tuple[str, np.ndarray]:
    """One training text for a cover and its key: which attributes the text pins down.

    Args:
        defects: (3,) 0/1 flags from `defect_flags`.

    Returns:
        (text, key) with key of shape (NUM_KEYS,): attribute index or -1 when unspecified.
    """
    key = np.full(NUM_KEYS, -1, dtype=np.int64)
    m, p = MOTIFS[motif], PALETTES[palette]
    q0 = 2 + len(STYLE_DIMS)  # first defect column
    r = rng.random()
    if r < 0.38:
        key[:2] = motif, palette
        return title, key
    if r < 0.44:
        key[:2] = motif, palette
        return f"a cover for {title}", key
    if r < 0.55:
        key[0] = motif
        return str(rng.choice([MOTIF_PROMPT.format(m), f"a {m}", m, f"a picture of a {m}"])), key
    if r < 0.66:
        key[1] = palette
        return str(
            rng.choice([PALETTE_PROMPT.format(p), p, f"something {p}", f"a {p} picture"])
        ), key
    if r < 0.75:
        key[:2] = motif, palette
        return str(rng.choice([f"a {p} {m}", f"a {p} cover with a {m}", f"{m}, {p}"])), key
    if r < 0.83:  # image quality only, sometimes with content
        key[q0:] = defects
        if rng.random() < 0.5:
            key[:2] = motif, palette
            return f"a {_quality_phrase(defects)} {p} {m}", key
        return f"a {_quality_phrase(defects)} cover", key
    # style: the full description (with quality), or a few dimensions
    key[:2] = motif, palette
    quality = ""
    if r < 0.92:
        dims = list(range(len(STYLE_DIMS)))
        key[q0:] = defects
        quality = _quality_phrase(defects)
    else:
        dims = sorted(rng.choice(len(STYLE_DIMS), size=int(rng.integers(1, 4)), replace=False))
        if rng.random() < 0.5:
            key[:2] = -1
    for d in dims:
        key[2 + d] = style[d]
    words = [_style_phrase(STYLE_DIMS[d], int(style[d])) for d in dims]
    adjectives = [
        w
        for d, w in zip(dims, words, strict=True)
        if STYLE_DIMS[d] in ("brightness", "saturation", "scale")
    ]
    rest = [
        w
        for d, w in zip(dims, words, strict=True)
        if STYLE_DIMS[d] not in ("brightness", "saturation", "scale")
    ]
    subject = f"{p} {m}" if key[0] >= 0 else "cover"
    text = " ".join(["a", *adjectives, subject])
    if rest:
        text += ", " + ", ".join(rest)
    if quality:
        text += ", " + quality
    return text, key


def match_matrix(keys: np.ndarray, attrs: np.ndarray) -> torch.Tensor:
    """Which texts describe which images: bool (T, I) from keys (T, K) and attributes (I, K)."""
    k = keys[:, None, :]  # (T, 1, K)
    return torch.from_numpy(np.all((k < 0) | (k == attrs[None, :, :]), axis=-1))


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


# Attribute groups for the class-prompt loss: (name, prompts in level order). The first two
# are the zero-shot gate's prompts; the style and defect groups make the image embedding carry
# what the `aesthetic` model and the `sd` prompts need.
ATTRIBUTE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("motif", tuple(MOTIF_PROMPT.format(m) for m in MOTIFS)),
    ("palette", tuple(PALETTE_PROMPT.format(p) for p in PALETTES)),
    ("brightness", ("a dark cover", "a mid cover", "a light cover")),
    ("saturation", ("a muted cover", "a normal cover", "a vivid cover")),
    ("scale", ("a small motif", "a medium motif", "a large motif")),
    ("layout", ("a centered motif", "a motif on the left", "a motif at the top")),
    ("frame", ("a cover with no frame", "a cover with a thin frame", "a cover with a thick frame")),
    ("texture", ("a flat background", "a background with stripes", "a background with dots")),
    ("blur", ("a sharp cover", "a blurry cover")),
    ("noise", ("a clean cover", "a noisy cover")),
    ("fade", ("a crisp cover", "a faded cover")),
)


def class_prompts() -> list[str]:
    """All class prompts, group after group (motif 8, palette 8, then style and defects)."""
    return [p for _, prompts in ATTRIBUTE_GROUPS for p in prompts]


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


def tokenizer_corpus(n_titles: int = 8_000) -> list[str]:
    """Titles of zoo renders plus every prompt form `make_text` writes."""
    sample = sample_covers(n_titles, seed=zoo_seed(TOKENIZER_SEED_OFFSET), size=8)
    rng = np.random.default_rng(zoo_seed(TOKENIZER_SEED_OFFSET))
    texts = list(sample.titles) + class_prompts() * 4
    for i in range(n_titles):
        flags = defect_flags(sample.specs[i].defects)
        texts.append(
            make_text(
                rng, sample.titles[i], sample.motif[i], sample.palette[i], sample.style[i], flags
            )[0]
        )
    return texts


def build_processor(vocab_size: int, n_titles: int = 8_000):
    """Train the BPE and wrap it, with a 64px image processor, in a stock CLIPProcessor."""
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    vocab, merges = train_clip_bpe(tokenizer_corpus(n_titles), vocab_size)
    pairs = [tuple(m.split(" ")) for m in merges]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=MAX_TOKENS)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        image_mean=list(_base.IMAGE_MEAN),
        image_std=list(_base.IMAGE_STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer), vocab, merges


def build_model(cfg: ClipRecipeConfig, tokenizer) -> torch.nn.Module:
    """A fresh tiny CLIPModel sized for `tokenizer`."""
    from transformers import CLIPConfig, CLIPModel

    eos = tokenizer.eos_token_id
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=4 * TEXT_HIDDEN,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.heads,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=cfg.projection_dim,
        ),
        vision_config=dict(
            hidden_size=cfg.vision_hidden,
            intermediate_size=4 * cfg.vision_hidden,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.heads,
            image_size=64,
            patch_size=cfg.patch_size,
            projection_dim=cfg.projection_dim,
        ),
        projection_dim=cfg.projection_dim,
    )
    return CLIPModel(config)


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


def _features(out: object) -> torch.Tensor:
    """Projected features from `get_*_features` (a tensor in transformers 4, an output in 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def text_embeds(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (B, P)."""
    out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return F.normalize(_features(out), dim=-1)


def image_embeds(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised CLIP image embeddings (B, P) from normalised pixels (B, 3, 64, 64)."""
    return F.normalize(_features(model.get_image_features(pixel_values=pixel_values)), dim=-1)


@torch.no_grad()
def zero_shot(
    model, tokenizer, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot motif and palette predictions from the gate prompts: two (N,) index arrays."""
    model.eval()
    tok = tokenizer(
        class_prompts()[: len(MOTIFS) + len(PALETTES)], padding=True, return_tensors="pt"
    )
    text = text_embeds(model, tok["input_ids"], tok["attention_mask"])  # (16, P)
    motif, palette = [], []
    for i in range(0, len(images), batch_size):
        pix = _base.images_to_tensor(images[i : i + batch_size])
        img = image_embeds(model, pix)  # (B, P)
        sims = img @ text.T  # (B, 16)
        motif.append(sims[:, : len(MOTIFS)].argmax(1).numpy())
        palette.append(sims[:, len(MOTIFS) :].argmax(1).numpy())
    return np.concatenate(motif), np.concatenate(palette)


@torch.no_grad()
def zero_shot_groups(model, tokenizer, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Zero-shot level of every attribute group of `ATTRIBUTE_GROUPS`: (N, G) indices."""
    model.eval()
    tok = tokenizer(class_prompts(), padding=True, return_tensors="pt")
    text = text_embeds(model, tok["input_ids"], tok["attention_mask"])  # (C, P)
    out = []
    for i in range(0, len(images), batch_size):
        sims = image_embeds(model, _base.images_to_tensor(images[i : i + batch_size])) @ text.T
        cols, start = [], 0
        for _, prompts in ATTRIBUTE_GROUPS:
            cols.append(sims[:, start : start + len(prompts)].argmax(1))
            start += len(prompts)
        out.append(torch.stack(cols, dim=1).numpy())  # (B, G)
    return np.concatenate(out)


def measure(path: str | Path, gate_set: evaldata.GateSet) -> dict[str, float]:
    """Gate metrics of the model at `path` on `gate_set`."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(path))
    tokenizer = CLIPTokenizer.from_pretrained(str(path))
    motif, palette = zero_shot(model, tokenizer, gate_set.images)
    metrics = {
        "zero_shot_motif_acc": float((motif == gate_set.motif).mean()),
        "zero_shot_palette_acc": float((palette == gate_set.palette).mean()),
        "n": float(len(motif)),
    }
    if gate_set.style is not None and gate_set.defects is not None:  # informative, not gated
        levels = zero_shot_groups(model, tokenizer, gate_set.images)  # (N, G)
        truth = np.concatenate([gate_set.style, gate_set.defects], axis=1)  # (N, 9)
        hits = levels[:, 2:] == truth
        metrics["zero_shot_style_acc"] = float(hits[:, : len(STYLE_DIMS)].mean())
        metrics["zero_shot_defect_acc"] = float(hits[:, len(STYLE_DIMS) :].mean())
    return metrics


def evaluate(path: str | Path, world_dir: str | Path | None) -> dict[str, float]:
    """Gate metrics on the covers of a CoverWorld folder (fresh renders when None)."""
    gate_set = (
        evaldata.fresh_covers(1000) if world_dir is None else evaldata.world_covers(Path(world_dir))
    )
    return measure(path, gate_set)


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
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    state = (_base.load_checkpoint(out, model, optimizer) if resume else None) or _base.TrainState()
    timer = _base.Timer(before=state.elapsed_s)
    logger.info(
        "clip: %d parameters, steps %d..%d", _base.count_parameters(model), state.step, cfg.steps
    )
    prompts = tokenizer(class_prompts(), padding=True, return_tensors="pt")
    model.train()
    bar = _base.progress(cfg.steps, state.step, "clip")
    while state.step < cfg.steps:
        lr = _base.cosine_lr(state.step, cfg.steps, cfg.lr, cfg.warmup)
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
            _base.save_checkpoint(out, model, optimizer, state)
            model.train()
    bar.close()
    _publish(out, model, processor, vocab, merges, cfg, timer.total())


def _publish(
    out: Path, model, processor, vocab, merges, cfg: ClipRecipeConfig, train_s: float
) -> None:
    """Save the final folder atomically, measure the gates on fresh renders, write the card."""
    model.eval()
    staged = out.with_name(f".{out.name}.publish")
    with _base.atomic_dir(staged) as tmp:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        write_vocab_merges(tmp, vocab, merges)
    timer = _base.Timer(before=train_s)
    gate_set = evaldata.fresh_covers(cfg.gate_items)
    metrics = measure(staged, gate_set)
    params = _base.count_parameters(model)
    _base.publish_files(staged, out)
    _base.clear_checkpoint(out)
    wall = timer.total()
    _base.write_gates(
        out, _base.gate_record("clip", metrics, THRESHOLDS, params, wall, gate_set.source)
    )
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
        config=asdict(cfg),
        parameters=params,
        gates=metrics,
        thresholds=THRESHOLDS,
        gate_data=f"{gate_set.source}; prompts '{MOTIF_PROMPT}' and '{PALETTE_PROMPT}'",
        wall_time_s=wall,
    )
    logger.info("clip gates: %s", metrics)
