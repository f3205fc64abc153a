"""coverworld-tiny: the embedded default models (`clip`, `sd`, `mllm`, `aesthetic`; `flow`
and `icg-adapter` once trained).

Each lives under `icg/zoo/weights/<name>/` in its library's standard format, trained by the
recipe in `icg.zoo.recipes.<name>` on CoverWorld zoo-seed renders only.
"""

from icg.zoo.registry import (
    PREFIX,
    REGISTRY,
    WEIGHTS_DIR,
    ZooEntry,
    evaluate_model,
    get,
    list_models,
    model_info,
    resolve,
    train_model,
)

__all__ = [
    "PREFIX",
    "REGISTRY",
    "WEIGHTS_DIR",
    "ZooEntry",
    "evaluate_model",
    "get",
    "list_models",
    "model_info",
    "resolve",
    "train_model",
]
