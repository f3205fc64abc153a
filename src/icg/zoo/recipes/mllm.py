"""Recipe of coverworld-tiny `mllm`: a tiny LLaVA (CLIP ViT + Qwen2 LM) that describes covers.

Known limit of the shipped model: its vision tower (trained from scratch) reads palette and
style but not motif shape; it names the motif from the title (blank titles: ~10% motif
accuracy). Starting the tower from `clip`'s image tower (`vision_init="zoo:clip"`, as LLaVA
starts from CLIP) was tried at 1000 steps and did worse (motif 0.19): not the default.

The architecture is transformers' `LlavaForConditionalGeneration` with a `CLIPVisionModel`
tower (64px, patch 16: 16 image tokens) and a `Qwen2ForCausalLM` language model, with a
`LlavaProcessor` (CLIPImageProcessor + Qwen2Tokenizer with a ChatML template). Why not the
Qwen2-VL classes: in transformers 5.x `Qwen2VLProcessor` needs a video processor, which needs
torchvision, which icg does not depend on; `AutoProcessor` could not load such a folder here.

setup (BPE on chat transcripts, model) → teacher-forced LM loss on the assistant answer
("motif: star. palette: blue. style: dark vivid large center thin flat.") for (title, cover)
prompts → save_pretrained → gates (greedy generation) → card.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from icg.world.attributes import MOTIFS, PALETTES, style_words
from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo import evaldata
from icg.zoo.recipes import _base
from icg.zoo.registry import resolve
from icg.zoo.tokenization import train_qwen_bpe

logger = logging.getLogger(__name__)

SEED_OFFSET = 2_000_000  # zoo_seed(SEED_OFFSET + step) renders the batch of `step`
TOKENIZER_SEED_OFFSET = 2_900_000
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN)
QUESTION = "describe the cover."
THRESHOLDS = {"motif_acc": 0.90, "palette_acc": 0.90}
# ChatML, as Qwen2 instruct models write it, with LLaVA's <image> placeholder; no default system.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_ANSWER = re.compile(r"motif:\s*([a-z-]+).*?palette:\s*([a-z-]+)", re.S)


@dataclass
class MllmRecipeConfig:
    """Hyper-parameters of the `mllm` recipe (defaults are the shipped model's)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1.5e-3
    warmup: int = 60
    weight_decay: float = 0.05
    vocab_size: int = 768
    vision_hidden: int = 96
    vision_layers: int = 3
    text_hidden: int = 128
    text_layers: int = 3
    heads: int = 4
    kv_heads: int = 2
    checkpoint_every: int = 100
    gate_items: int = 300
    tokenizer_titles: int = 6_000
    # LLaVA-style option: start the vision tower from `clip`'s image tower (same ViT config) and
    # train it at a fraction of the LR. None (shipped): from scratch.
    vision_init: str | None = None
    vision_lr_scale: float = 0.1


def answer_text(motif: int, palette: int, style: np.ndarray) -> str:
    """The assistant's description of a cover."""
    return f"motif: {MOTIFS[motif]}. palette: {PALETTES[palette]}. style: {' '.join(style_words(style))}."


def parse_answer(text: str) -> tuple[int, int]:
    """(motif, palette) indices named by a generated answer; -1 where unreadable."""
    found = _ANSWER.search(text.lower())
    if not found:
        return -1, -1
    m, p = found.groups()
    return (MOTIFS.index(m) if m in MOTIFS else -1), (PALETTES.index(p) if p in PALETTES else -1)


def messages(title: str, answer: str | None = None) -> list[dict]:
    """The chat of one example: the user shows the cover and its title; the assistant answers."""
    chat: list[dict] = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": f"title: {title}\n{QUESTION}"}],
        }
    ]
    if answer is not None:
        chat.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return chat


def _render_chat(title: str, answer: str) -> str:
    """The transcript as the chat template writes it (for the BPE corpus, no template engine)."""
    return (
        f"<|im_start|>user\n<image>\ntitle: {title}\n{QUESTION}<|im_end|>\n"
        f"<|im_start|>assistant\n{answer}<|im_end|>\n"
    )


def build_processor(vocab_size: int, n_titles: int = 6_000):
    """Train the BPE and wrap it with a 64px CLIPImageProcessor in a stock LlavaProcessor."""
    from transformers import CLIPImageProcessor, LlavaProcessor, Qwen2Tokenizer

    s = sample_covers(n_titles, seed=zoo_seed(TOKENIZER_SEED_OFFSET), size=8)
    corpus = [
        _render_chat(s.titles[i], answer_text(s.motif[i], s.palette[i], s.style[i]))
        for i in range(len(s.titles))
    ]
    vocab, merges = train_qwen_bpe(corpus, vocab_size)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m.split(" ")) for m in merges],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        model_max_length=256,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        image_mean=list(_base.IMAGE_MEAN),
        image_std=list(_base.IMAGE_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(cfg: MllmRecipeConfig, tokenizer) -> torch.nn.Module:
    """A fresh tiny LlavaForConditionalGeneration sized for `tokenizer`."""
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration

    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=cfg.vision_hidden,
            intermediate_size=4 * cfg.vision_hidden,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.heads,
            image_size=64,
            patch_size=16,
            projection_dim=cfg.vision_hidden,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=3 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=eos,
            pad_token_id=pad,
        ),
        image_token_index=image_token,
        image_seq_length=16,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos, pad], pad_token_id=pad, max_new_tokens=40, do_sample=False
    )
    return model


def init_vision_from_clip(model, clip_path: str) -> None:
    """Copy a CLIPModel's image tower into the LLaVA vision tower (configs must agree)."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(clip_path)
    tower = model.model.vision_tower
    target = getattr(tower, "vision_model", tower)
    ours, theirs = model.config.vision_config, clip.config.vision_config
    for field in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
    ):
        if getattr(ours, field) != getattr(theirs, field):
            raise ValueError(
                f"vision_init={clip_path}: vision_config.{field}={getattr(theirs, field)}, "
                f"expected {getattr(ours, field)} (the mllm's vision tower)"
            )
    target.load_state_dict(clip.vision_model.state_dict())


def encode(processor, images: np.ndarray, titles: list[str], answers: list[str] | None) -> dict:
    """Processor inputs for a batch; with answers, also `labels` (-100 outside the answer)."""
    if answers is None:
        chats = [messages(t) for t in titles]
        texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in chats]
    else:
        chats = [messages(t, a) for t, a in zip(titles, answers, strict=True)]
        texts = [processor.apply_chat_template(c) for c in chats]
    inputs = processor(images=list(images), text=texts, padding=True, return_tensors="pt")
    if answers is not None:
        inputs["labels"] = answer_labels(inputs["input_ids"], processor.tokenizer)
    return dict(inputs)


def answer_labels(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """LM targets: the tokens after the last `<|im_start|>assistant\\n`, up to its `<|im_end|>`."""
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    labels = torch.full_like(input_ids, -100)
    for row, ids in enumerate(input_ids.tolist()):
        begin = len(ids) - 1 - ids[::-1].index(start)  # the assistant turn is the last one
        header = len(tokenizer("assistant\n", add_special_tokens=False)["input_ids"])
        first = begin + 1 + header
        end = ids.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), first)
        labels[row, first : end + 1] = input_ids[row, first : end + 1]
    return labels


def batch(step: int, cfg: MllmRecipeConfig, processor) -> dict:
    """The training batch of `step`: a pure function of the step."""
    s = sample_covers(cfg.batch_size, seed=zoo_seed(SEED_OFFSET + step))
    answers = [answer_text(s.motif[i], s.palette[i], s.style[i]) for i in range(len(s.titles))]
    return encode(processor, s.images, s.titles, answers)


@torch.no_grad()
def describe(
    model, processor, images: np.ndarray, titles: list[str], batch_size: int = 64
) -> list[str]:
    """Greedy answers of the model for (image, title) pairs."""
    model.eval()
    out: list[str] = []
    for i in range(0, len(titles), batch_size):
        inputs = encode(processor, images[i : i + batch_size], titles[i : i + batch_size], None)
        ids = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1] :]
        out.extend(processor.batch_decode(new, skip_special_tokens=True))
    return out


def measure(path: str | Path, gate_set: evaldata.GateSet) -> dict[str, float]:
    """Gate metrics of the model at `path` on `gate_set` (greedy generation vs truth)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(path))
    processor = AutoProcessor.from_pretrained(str(path))
    answers = describe(model, processor, gate_set.images, gate_set.titles)
    parsed = np.array([parse_answer(a) for a in answers])  # (N, 2)
    return {
        "motif_acc": float((parsed[:, 0] == gate_set.motif).mean()),
        "palette_acc": float((parsed[:, 1] == gate_set.palette).mean()),
        "parse_rate": float((parsed >= 0).all(axis=1).mean()),
        "n": float(len(answers)),
    }


def evaluate(path: str | Path, world_dir: str | Path | None) -> dict[str, float]:
    """Gate metrics on the items (title + reference cover) of a CoverWorld folder."""
    gate_set = (
        evaldata.fresh_covers(300) if world_dir is None else evaldata.world_items(Path(world_dir))
    )
    return measure(path, gate_set)


def train(out: Path, *, resume: bool, seed: int, config: MllmRecipeConfig | None = None) -> None:
    """Train coverworld-tiny `mllm` into `out` (a save_pretrained folder + card + gates.json)."""
    cfg = config or MllmRecipeConfig()
    out = Path(out)
    _base.setup_torch(seed)
    processor = build_processor(cfg.vocab_size, cfg.tokenizer_titles)
    model = build_model(cfg, processor.tokenizer)
    if cfg.vision_init is not None:
        init_vision_from_clip(model, resolve(cfg.vision_init))
    groups = []
    for vision in (False, True):
        named = [(n, p) for n, p in model.named_parameters() if ("vision_tower" in n) == vision]
        scale = cfg.vision_lr_scale if vision and cfg.vision_init is not None else 1.0
        for decay in (True, False):
            params = [p for n, p in named if (p.ndim >= 2 and "embed" not in n) == decay]
            wd = cfg.weight_decay if decay else 0.0
            groups.append({"params": params, "weight_decay": wd, "lr_scale": scale})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))
    state = (_base.load_checkpoint(out, model, optimizer) if resume else None) or _base.TrainState()
    timer = _base.Timer(before=state.elapsed_s)
    logger.info(
        "mllm: %d parameters, steps %d..%d", _base.count_parameters(model), state.step, cfg.steps
    )
    model.train()
    bar = _base.progress(cfg.steps, state.step, "mllm")
    while state.step < cfg.steps:
        lr = _base.cosine_lr(state.step, cfg.steps, cfg.lr, cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss = model(**batch(state.step, cfg, processor)).loss
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
    _publish(out, model, processor, cfg, timer.total())


def _publish(out: Path, model, processor, cfg: MllmRecipeConfig, train_s: float) -> None:
    """Save the final folder atomically, measure the gates on fresh renders, write the card."""
    model.eval()
    staged = out.with_name(f".{out.name}.publish")
    with _base.atomic_dir(staged) as tmp:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
    timer = _base.Timer(before=train_s)
    gate_set = evaldata.fresh_covers(cfg.gate_items)
    metrics = measure(staged, gate_set)
    params = _base.count_parameters(model)
    _base.publish_files(staged, out)
    _base.clear_checkpoint(out)
    wall = timer.total()
    _base.write_gates(
        out, _base.gate_record("mllm", metrics, THRESHOLDS, params, wall, gate_set.source)
    )
    _base.write_card(
        out,
        name="mllm",
        summary=(
            "A tiny LLaVA-architecture image-text-to-text model (CLIP ViT 64px/16 → 16 image "
            "tokens, 2-layer GELU projector, Qwen2 decoder) that reads a cover and its title and "
            "answers `motif: star. palette: blue. style: dark vivid large center thin flat.` "
            + (
                f"Its vision tower starts from `{cfg.vision_init}`'s image tower. "
                if cfg.vision_init
                else "Its vision tower is trained from scratch: it reads palette and style from "
                "the cover; the motif it names comes from the title. "
            )
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
            f"k = {SEED_OFFSET}..{SEED_OFFSET + cfg.steps - 1} (25% defect rate) with their messy "
            "titles; the answer is written from the render's true motif, palette and style. The "
            f"BPE (Qwen2 format) is trained on {cfg.tokenizer_titles} transcripts of zoo seed {zoo_seed(TOKENIZER_SEED_OFFSET)}."
        ),
        recipe="teacher-forced LM loss on the answer tokens only, AdamW, cosine schedule, 1 CPU thread",
        config=asdict(cfg),
        parameters=params,
        gates=metrics,
        thresholds=THRESHOLDS,
        gate_data=f"{gate_set.source}; greedy generation from (title, cover), answers parsed",
        wall_time_s=wall,
    )
    logger.info("mllm gates: %s", metrics)
