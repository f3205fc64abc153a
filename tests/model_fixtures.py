"""Tiny random components for the model, pipeline and training tests (all built in code, CPU)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerFast,
)

from icg.models.mllm import without_video_processor

WORDS = (
    "user assistant system a an the of and in on with cover for title red blue green yellow "
    "cat dog sun moon tree star book night day city sea river old new tale story guide"
).split()

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def word_tokenizer(specials: list[str], model_max_length: int = 16) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``WORDS`` with the given special tokens first."""
    vocab = {t: i for i, t in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token=specials[2] if len(specials) > 2 else None,
        eos_token=specials[3] if len(specials) > 3 else None,
        additional_special_tokens=specials[2:],
        model_max_length=model_max_length,
    )


def tiny_clip_text(hidden: int = 32, projection: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = word_tokenizer(["<pad>", "<unk>", "<bos>", "<eos>"], model_max_length=16)
    config = CLIPTextConfig(
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=16,
        projection_dim=hidden,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval(), tokenizer


def get_dummy_components(seed: int = 0) -> dict:
    """Components of a tiny SD1.5-shaped ``StableDiffusionPipeline`` (8×8 latents, 32-px images)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    text_encoder, tokenizer = tiny_clip_text(32, seed=seed)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def get_dummy_sdxl_components(seed: int = 0) -> dict:
    """Components of a tiny SDXL-shaped pipeline (two text towers, ``text_time`` conditioning)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    text_encoder, tokenizer = tiny_clip_text(32, seed=seed)
    text_encoder_2, tokenizer_2 = tiny_clip_text(32, projection=True, seed=seed + 1)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


QWEN_SPECIALS = [
    "<pad>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|image_pad|>",
    "<|vision_end|>",
    "<|video_pad|>",
]


def tiny_qwen2vl(seed: int = 0, hidden: int = 32):
    """A tiny random ``Qwen2VLForConditionalGeneration`` and a working processor (56-px images)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )

    tokenizer = word_tokenizer(QWEN_SPECIALS, model_max_length=256)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = without_video_processor(Qwen2VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 1, 1],
            },
            pad_token_id=0,
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<|im_end|>"],
        ),
        vision_config=dict(
            depth=1,
            embed_dim=16,
            hidden_size=hidden,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval().requires_grad_(False)
    return model, processor


def tiny_llava(seed: int = 0, hidden: int = 32):
    """A tiny random ``LlavaForConditionalGeneration`` (CLIP vision + Llama) and its processor."""
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>"]
    tokenizer = word_tokenizer(specials, model_max_length=256)
    template = CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=template,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=16,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval().requires_grad_(False)
    return model, processor


def dummy_image(seed: int = 0, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """A deterministic RGB image."""
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def tiny_icg(user_dim: int = 6, num_meta_tokens: int = 3, seed: int = 0):
    """A tiny SD pipeline and a fresh ICG model (Qwen2-VL MLLM) for it."""
    from diffusers import StableDiffusionPipeline

    from icg.models.icg_model import ICGModel

    base = StableDiffusionPipeline(**get_dummy_components(seed))
    base.set_progress_bar_config(disable=True)
    mllm, processor = tiny_qwen2vl(seed)
    torch.manual_seed(seed)
    model = ICGModel.build(
        base.unet,
        mllm,
        processor,
        num_meta_tokens=num_meta_tokens,
        num_tokens=2,
        user_dim=user_dim,
        refiner_hidden_dim=8,
        base_model="tiny-sd",
        mllm_name_or_path="tiny-qwen2vl",
    )
    return base, model


def perturb_(model) -> None:
    """Give the zero-initialised branches random values (a 'trained' model)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def hand_made_preference(user_dim: int = 2):
    """A `PreferenceModel` by hand: cover taste = gelu(embedding), no global appeal, user taste
    = the platform embedding's first two entries."""
    from icg.models.preference import PreferenceModel

    model = PreferenceModel(image_dim=2, user_dim=user_dim, rank=2, hidden_dim=2, num_positions=3)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.image_in.weight.copy_(torch.eye(2))
        model.image_taste.weight.copy_(torch.eye(2))
        model.user_proj.weight.copy_(torch.eye(2, user_dim))
    return model.eval()
