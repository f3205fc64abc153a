"""UserPrompt: taste words distilled from the preference model, in the prompt of every draw."""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import hand_made_preference, tiny_icg

from icg.models.icg_model import ICGModel
from icg.models.user_prompt import UserPrompt, load_style_vocabulary

GROUPS = ["hue", "size"]
PHRASES = [["red", "blue"], ["small", "huge"]]
# cover embeddings and the CLIP texts of each level: covers A and D are tagged red, B and C
# blue; A and B huge, C and D small. The preference model's cover taste is gelu(embedding).
COVERS = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]])
TEXTS = [torch.tensor([[1.0, 0.0], [-1.0, 0.01]]), torch.tensor([[0.0, -1.0], [0.01, 1.0]])]


def _distilled(top_k: int = 2) -> UserPrompt:
    return UserPrompt.from_preference(
        hand_made_preference(), COVERS, TEXTS, GROUPS, PHRASES, top_k=top_k
    )


def test_distilled_scores_are_the_preference_models_taste_against_each_level():
    prompt, pref = _distilled(), hand_made_preference()
    users = torch.tensor([[2.0, 0.0], [-1.0, 0.5], [0.3, -2.0]])
    z, _ = pref.user_vector(3, users)
    taste, _ = pref.image_features(COVERS)
    levels = [[0, 3], [1, 2], [2, 3], [0, 1]]  # red, blue, small, huge
    expected = torch.stack([z @ taste[rows].mean(0) for rows in levels], dim=1)
    torch.testing.assert_close(prompt.score(users), expected)


def test_words_follow_the_users_taste_and_skip_users_without_an_embedding():
    prompt = _distilled()
    users = torch.tensor([[3.0, 0.0], [0.0, 3.0], [float("nan"), 0.0]])
    words = prompt.words(users)
    assert "red" in words[0] and "blue" in words[1]
    assert all(w == ["huge"] for w in (words[0][1:], words[1][1:]))
    assert words[2] == []
    assert prompt.prompts(["a cover for X"] * 3, users)[2] == "a cover for X"
    assert prompt.prompts(["p"], None) == ["p"]


def test_groups_are_ranked_by_how_much_the_user_cares():
    prompt = UserPrompt(user_dim=2, groups=GROUPS, phrases=PHRASES, top_k=1)
    with torch.no_grad():  # hue scores (u0, -u0), size scores (0, u1)
        prompt.score.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
        prompt.score.bias.zero_()
    words = prompt.words(torch.tensor([[1.0, 0.5], [0.2, 3.0], [-1.0, -3.0]]))
    assert words == [["red"], ["huge"], ["small"]]  # the last dislikes huge most of all
    assert prompt.prompts(["p"], torch.tensor([[0.2, 3.0]])) == ["p, huge"]


def test_icg_model_saves_and_loads_its_user_prompt_and_draws_with_its_words(tmp_path):
    from icg.pipeline import ICGPipeline

    base, model = tiny_icg(user_dim=2)
    model.user_prompt = _distilled()
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "icg_config.json").read_text())
    assert config["parts"][-1] == "user_prompt"
    loaded = ICGModel.from_pretrained(
        tmp_path / "adapter", model.encoder.mllm, model.encoder.processor
    )
    users = torch.tensor([[3.0, 0.0]])
    plain = model.adapter.prompts(["t"])
    assert loaded.prompts(["t"], users) == [plain[0] + ", red, huge"]
    assert loaded.prompts(["t"]) == plain
    assert not any(p.requires_grad for p in loaded.user_prompt.parameters())
    assert not {id(p) for p in loaded.trainable_parameters()} & {
        id(p) for p in loaded.user_prompt.parameters()
    }

    def draw(m, user_guidance=1.0):
        pipe = ICGPipeline(base, m)
        out = pipe(["t"], [None], user_embeddings=users, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0), output_type="pt",
                   user_guidance=user_guidance)  # fmt: skip
        pipe.remove_adapter()
        return out.images

    with_words = draw(loaded)
    loaded.user_prompt = None
    assert not torch.equal(with_words, draw(loaded))  # the words reach the base model
    loaded.user_prompt = model.user_prompt
    nouser = ICGPipeline(base, loaded)
    reference = nouser(["t"], [None], num_inference_steps=2, output_type="pt",
                       generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    nouser.remove_adapter()
    assert torch.equal(draw(loaded, user_guidance=0.0), reference)  # w_u = 0: no words either


def test_bad_vocabulary_names_the_file_and_group(tmp_path):
    bad = tmp_path / "vocab.json"
    bad.write_text(json.dumps({"brightness": {"dark": "a dark cover"}}))
    with pytest.raises(ValueError, match=r"vocab\.json.*'brightness'"):
        load_style_vocabulary(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"b": {"dark": "a dark cover", "light": "a light cover"}}))
    assert load_style_vocabulary(good) == {"b": {"dark": "a dark cover", "light": "a light cover"}}


def test_stage_a_refuses_a_bad_vocabulary_before_training(tmp_path):
    from pydantic import ValidationError

    from icg.training.align import AlignConfig

    (tmp_path / "data").mkdir()
    bad = tmp_path / "vocab.json"
    bad.write_text("[1, 2]")
    with pytest.raises((ValidationError, ValueError), match="vocab.json"):
        AlignConfig(data=tmp_path / "data", out=tmp_path / "out", targets="clicks",
                    style_vocabulary=bad)  # fmt: skip
