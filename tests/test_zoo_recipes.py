"""Recipe mechanics on tiny configs: resumable checkpoints, loss pieces, label masks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from icg.checkpoints import latest_checkpoint, load_trainer_state
from icg.zoo.recipes import _base
from icg.zoo.recipes.clip import config as clip_config
from icg.zoo.recipes.clip import losses as clip_losses
from icg.zoo.recipes.clip import recipe as clip_recipe
from icg.zoo.recipes.clip import texts as clip_texts
from icg.zoo.recipes.mllm import chat as mllm_chat
from icg.zoo.recipes.mllm import config as mllm_config
from icg.zoo.recipes.mllm import model as mllm_model

TINY_CLIP = clip_config.ClipRecipeConfig(
    steps=4,
    batch_size=8,
    warmup=2,
    vocab_size=700,
    vision_hidden=16,
    vision_layers=1,
    text_layers=1,
    heads=2,
    projection_dim=16,
    checkpoint_every=2,
    gate_items=8,
    tokenizer_titles=200,
)


class _Stop(Exception):
    pass


def _train_straight_and_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe, config, crash_at: int
) -> tuple[Path, Path, Path]:
    """Train `recipe` once straight through, and once crashing in `recipe.batch(crash_at)`
    then resumed. Returns both output folders and the checkpoint the resume started from;
    the two published ``model.safetensors`` are checked to be bit-identical."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    recipe.train(straight, resume=False, seed=0, config=config)
    real_batch = recipe.batch

    def crashing_batch(step: int, *args):
        if step == crash_at:
            raise _Stop
        return real_batch(step, *args)

    monkeypatch.setattr(recipe, "batch", crashing_batch)
    with pytest.raises(_Stop):
        recipe.train(interrupted, resume=False, seed=0, config=config)
    ckpt = latest_checkpoint(interrupted / _base.CHECKPOINT_DIR)
    assert ckpt is not None
    held = tmp_path / "held"  # the checkpoint as it was, before the resume clears it
    shutil.copytree(ckpt, held)
    monkeypatch.setattr(recipe, "batch", real_batch)
    recipe.train(interrupted, resume=True, seed=0, config=config)

    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(interrupted / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    return straight, interrupted, held


def test_clip_recipe_resume_reproduces_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight, interrupted, ckpt = _train_straight_and_interrupted(
        tmp_path,
        monkeypatch,
        clip_recipe,
        TINY_CLIP,
        crash_at=3,  # after the step-2 checkpoint
    )
    assert load_trainer_state(ckpt)["step"] == 2
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ]
    assert set(load_trainer_state(ckpt)) == {"step", "elapsed_s", "history"}
    for folder in (straight, interrupted):
        assert not (folder / _base.CHECKPOINT_DIR).exists()
        for name in (
            "config.json",
            "vocab.json",
            "merges.txt",
            "tokenizer.json",
            "README.md",
            "gates.json",
        ):
            assert (folder / name).is_file(), name
        gates = _base.read_gates(folder)
        assert gates["name"] == "clip" and set(gates["thresholds"]) <= set(gates["metrics"])


def test_cosine_lr_schedule() -> None:
    assert _base.cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert _base.cosine_lr(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert _base.cosine_lr(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert _base.cosine_lr(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert _base.cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.0)
    assert _base.cosine_lr(100, 100, 2.0, 10, floor=0.05) == pytest.approx(0.1)
    values = [_base.cosine_lr(s, 100, 1.0, 10, floor=0.05) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_cosine_lr_floor_zero_and_unit_peak_keep_the_plain_formulas_bit_for_bit() -> None:
    import math

    for step in range(0, 120, 7):
        c = math.cos(math.pi * min(1.0, (step - 10) / 90))
        if step >= 10:
            assert _base.cosine_lr(step, 100, 3e-4, 10) == 0.5 * 3e-4 * (1.0 + c)
            assert _base.cosine_lr(step, 100, 1.0, 10, floor=0.1) == 0.1 + (1.0 - 0.1) * 0.5 * (
                1.0 + c
            )


def test_multi_positive_loss_and_match() -> None:
    keys = np.array([[0, -1], [-1, 1], [2, 2]])  # "motif 0", "palette 1", "motif 2 + palette 2"
    attrs = np.array([[0, 1], [1, 1], [2, 2]])
    match = clip_texts.match_matrix(keys, attrs)
    assert match.tolist() == [[True, False, False], [True, True, False], [False, False, True]]
    perfect = torch.where(match, 50.0, -50.0)
    wrong = torch.where(match, -50.0, 50.0)
    assert clip_losses.multi_positive_clip_loss(
        perfect, match
    ) < clip_losses.multi_positive_clip_loss(wrong, match)
    # uniform targets over two positives: the floor is log(2) for that row, not 0
    assert clip_losses.multi_positive_clip_loss(perfect, match).item() == pytest.approx(
        (np.log(2) / 3 + np.log(2) / 3) / 2, abs=1e-4
    )


def test_clip_texts_pin_their_keys() -> None:
    rng = np.random.default_rng(0)
    style = np.array([0, 2, 1, 0, 1, 2])
    flags = np.array([1, 0, 1])
    for _ in range(200):
        text, key = clip_texts.make_text(rng, "The Azure Star", 6, 5, style, flags)
        assert key.shape == (clip_texts.NUM_KEYS,)
        pinned = key >= 0
        attrs = np.concatenate([[6, 5], style, flags])
        assert (key[pinned] == attrs[pinned]).all()
        assert text


def test_mllm_answer_round_trip_and_labels() -> None:
    answer = mllm_chat.answer_text(6, 5, np.array([0, 2, 2, 0, 1, 0]))
    assert answer == "motif: star. palette: blue. style: dark vivid large center thin flat."
    assert mllm_chat.parse_answer(answer) == (6, 5)
    assert mllm_chat.parse_answer("nonsense") == (-1, -1)

    processor = mllm_model.build_processor(vocab_size=500, n_titles=200)
    images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    inputs = mllm_chat.encode(processor, images, ["The Azure Star", "x"], [answer, answer])
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(mllm_chat.IMAGE_TOKEN)
    assert (inputs["input_ids"] == image_id).sum(1).tolist() == [16, 16]  # 64px / patch 16
    for row in range(2):
        labels = inputs["labels"][row]
        kept = tok.decode(labels[labels >= 0])
        assert kept == answer + "<|im_end|>"


def test_class_prompt_groups_follow_the_key_columns() -> None:
    from icg.world.attributes import STYLE_DIMS, STYLE_LEVELS

    names = tuple(name for name, _ in clip_texts.ATTRIBUTE_GROUPS)
    assert names == ("motif", "palette", *STYLE_DIMS, "blur", "noise", "fade")
    assert len(names) == clip_texts.NUM_KEYS  # one group per column of a text key
    for name, prompts in clip_texts.ATTRIBUTE_GROUPS[2:8]:
        assert len(prompts) == len(STYLE_LEVELS[name])
    targets = torch.zeros(4, len(names), dtype=torch.long)
    logits = torch.zeros(4, len(clip_texts.class_prompts()))
    uniform = clip_losses.class_prompt_loss(logits, targets)
    # log 8 (motif) + log 8 (palette) + mean of log 3 (x6) and log 2 (x3)
    expected = 2 * np.log(8) + (6 * np.log(3) + 3 * np.log(2)) / 9
    assert uniform.item() == pytest.approx(expected, rel=1e-5)


def test_mllm_vision_from_pretrained_copies_a_matching_clip_tower(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    cfg = mllm_config.MllmRecipeConfig(vision_hidden=16, vision_layers=1, heads=2, text_hidden=16)
    processor = mllm_model.build_processor(vocab_size=400, n_titles=100)
    model = mllm_model.build_model(cfg, processor.tokenizer)
    vision = dict(
        hidden_size=16, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=64, patch_size=16,
    )  # fmt: skip
    clip = CLIPModel(
        CLIPConfig(
            vision_config=vision,
            text_config=dict(
                hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
            ),
        )
    )
    clip.save_pretrained(str(tmp_path / "clip"))
    mllm_model.init_vision_from_clip(model, str(tmp_path / "clip"))
    for name, value in clip.vision_model.state_dict().items():
        tower = model.model.vision_tower
        torch.testing.assert_close(getattr(tower, "vision_model", tower).state_dict()[name], value)
    vision["patch_size"] = 8
    CLIPModel(
        CLIPConfig(
            vision_config=vision,
            text_config=dict(
                hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
            ),
        )
    ).save_pretrained(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="patch_size=8, expected 16"):
        mllm_model.init_vision_from_clip(model, str(tmp_path / "other"))


def test_mllm_batches_blank_titles_or_grey_covers_so_both_are_read() -> None:
    from icg.zoo.recipes.mllm import recipe as mllm_recipe

    processor = mllm_model.build_processor(vocab_size=500, n_titles=200)
    cfg = mllm_config.MllmRecipeConfig(batch_size=64, title_dropout=0.4, image_dropout=0.3)
    a, b = mllm_recipe.batch(3, cfg, processor), mllm_recipe.batch(3, cfg, processor)
    torch.testing.assert_close(a["input_ids"], b["input_ids"])  # a pure function of the step
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"])
    texts = processor.tokenizer.batch_decode(a["input_ids"], skip_special_tokens=False)
    blank = np.array(["title: \n" in t for t in texts])
    grey = a["pixel_values"].flatten(2).std(2).amax(1).numpy() < 1e-6  # flat in every channel
    assert 12 <= blank.sum() <= 40 and 6 <= grey.sum() <= 32, (blank.sum(), grey.sum())
    assert not (blank & grey).any()  # an example always keeps one of the two
    never = mllm_config.MllmRecipeConfig(batch_size=64, title_dropout=0.0, image_dropout=0.0)
    plain = mllm_recipe.batch(3, never, processor)
    assert not any("title: \n" in t for t in processor.tokenizer.batch_decode(plain["input_ids"]))
    assert (plain["pixel_values"].flatten(2).std(2).amax(1) > 1e-6).all()


TINY_MLLM = mllm_config.MllmRecipeConfig(
    steps=3,
    batch_size=4,
    warmup=1,
    vocab_size=500,
    vision_hidden=16,
    vision_layers=1,
    text_hidden=16,
    text_layers=1,
    heads=2,
    kv_heads=1,
    checkpoint_every=2,
    gate_items=4,
    tokenizer_titles=200,
    vision_from_pretrained=None,
    vision_warmup_steps=2,
    vision_warmup_batch=4,
    threads=1,
)


def test_mllm_recipe_resumes_across_the_vision_warmup_and_publishes_no_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icg.zoo.recipes.mllm import recipe as mllm_recipe

    straight, _, ckpt = _train_straight_and_interrupted(
        tmp_path, monkeypatch, mllm_recipe, TINY_MLLM, crash_at=1
    )  # the second LM step, after the checkpoint that ends the two warm-up steps
    assert load_trainer_state(ckpt)["step"] == 2
    held = load_file(str(ckpt / "model.safetensors"))
    assert any(k.startswith("motif_head.") for k in held)  # the warm-up head resumes too
    published = load_file(str(straight / "model.safetensors"))
    assert not any("motif_head" in k for k in published)
    gates = _base.read_gates(straight)
    assert gates["name"] == "mllm" and "image_only_motif" in gates["metrics"]


def test_mllm_full_strategy_feeds_the_cls_token_too() -> None:
    for strategy, tokens in (("full", 17), ("default", 16)):
        cfg = TINY_MLLM.model_copy(update={"vision_feature_select_strategy": strategy})
        processor = mllm_model.build_processor(500, 200, strategy)
        model = mllm_model.build_model(cfg, processor.tokenizer)
        image = np.zeros((1, 64, 64, 3), dtype=np.uint8)
        inputs = mllm_chat.encode(processor, image, ["The Star"], None)
        image_id = processor.tokenizer.convert_tokens_to_ids(mllm_chat.IMAGE_TOKEN)
        assert (
            int((inputs["input_ids"] == image_id).sum()) == tokens == model.config.image_seq_length
        )
        with torch.no_grad():
            model(**inputs)  # the tower's output and the placeholders agree


def test_mllm_finetune_from_a_published_model_keeps_its_decoder(tmp_path: Path) -> None:
    from transformers import AutoProcessor

    from icg.zoo.recipes.mllm import recipe as mllm_recipe

    base = TINY_MLLM.model_copy(update={"vision_warmup_steps": 0})
    mllm_recipe.train(tmp_path / "init", resume=False, seed=0, config=base)
    tuned = base.model_copy(
        update={
            "init_from": str(tmp_path / "init"),
            "train_text": False,
            "first_batch": base.steps,
            "vision_feature_select_strategy": "full",
            "vision_warmup_steps": 2,
            "vocab_size": 1,  # unused: the init's BPE is kept
        }
    )
    mllm_recipe.train(tmp_path / "tuned", resume=False, seed=0, config=tuned)
    before = load_file(str(tmp_path / "init" / "model.safetensors"))
    after = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    assert before.keys() == after.keys()
    for name, value in before.items():
        same = torch.equal(after[name], value)
        assert same == ("vision_tower" not in name and "multi_modal_projector" not in name), name
    processor = AutoProcessor.from_pretrained(str(tmp_path / "tuned"))
    inputs = mllm_chat.encode(processor, np.zeros((1, 64, 64, 3), np.uint8), ["The Star"], None)
    image_id = processor.tokenizer.convert_tokens_to_ids(mllm_chat.IMAGE_TOKEN)
    assert int((inputs["input_ids"] == image_id).sum()) == 17  # the CLS token is read too
    assert "its decoder is frozen" in (tmp_path / "tuned" / "README.md").read_text()
