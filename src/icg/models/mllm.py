"""Loading a frozen image-text-to-text MLLM and its processor by name or path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)
from transformers.processing_utils import ProcessorMixin

from icg.artifacts import refuse_pickle_weights

logger = logging.getLogger(__name__)


def without_video_processor(processor_cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A subclass of ``processor_cls`` that needs no video processor.

    Processors like ``Qwen2VLProcessor`` require a video processor, which transformers 5 can only
    build with torchvision installed. Covers are still images, so we build the processor from its
    image processor and tokenizer alone.
    """
    if "video_processor" not in ProcessorMixin.get_attributes.__func__(processor_cls):
        return processor_cls

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_cls.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    return type(processor_cls.__name__, (processor_cls,), {"__init__": __init__})


def _processor_class_name(path: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            found = json.loads(file.read_text()).get("processor_class")
            if found:
                return found
    return None


def load_processor(name_or_path: str):
    """Load the processor of an MLLM, without a video processor if torchvision is missing."""
    try:
        processor = AutoProcessor.from_pretrained(name_or_path)
        if isinstance(processor, ProcessorMixin) and hasattr(processor, "image_processor"):
            return processor
    except (ImportError, OSError, ValueError, TypeError, AttributeError) as err:
        logger.info(
            "AutoProcessor failed for %s (%s); building it from its parts", name_or_path, err
        )
    path = Path(name_or_path)
    class_name = _processor_class_name(path) if path.is_dir() else None
    if class_name is None or not hasattr(transformers, class_name):
        raise ValueError(f"mllm: cannot find a processor class for {name_or_path!r}")
    processor_cls = without_video_processor(getattr(transformers, class_name))
    chat_template = None
    if (path / "chat_template.jinja").is_file():
        chat_template = (path / "chat_template.jinja").read_text()
    return processor_cls(
        image_processor=AutoImageProcessor.from_pretrained(name_or_path),
        tokenizer=AutoTokenizer.from_pretrained(name_or_path),
        chat_template=chat_template,
    )


def load_mllm(name_or_path: str, torch_dtype: torch.dtype | None = None):
    """Load a frozen image-text-to-text model and its processor.

    Args:
        name_or_path: a local directory or hub id loadable by ``AutoModelForImageTextToText``.
        torch_dtype: dtype of the weights (``None``: as stored).

    Returns:
        ``(model, processor)``, the model in eval mode with ``requires_grad=False``.
    """
    refuse_pickle_weights(name_or_path, "mllm")
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    kwargs["use_safetensors"] = True  # a hub id never falls back to pickle weights
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    model.eval().requires_grad_(False)
    return model, load_processor(name_or_path)
