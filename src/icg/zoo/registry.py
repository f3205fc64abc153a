"""The coverworld-tiny registry: names, formats, loaders and recipes of the embedded models.

`resolve("zoo:clip")` gives the shipped folder; any other string (a local path or a hub id) is
returned unchanged, so every `--model` option of icg accepts both.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from icg.config import load_config
from icg.layout import ICG_CONFIG_FILE
from icg.zoo.gates import folder_size, gate_passed, read_gates

PREFIX = "zoo:"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# a save_pretrained folder has one of these once the recipe has published it
FINISHED_MARKERS = ("config.json", "model_index.json", ICG_CONFIG_FILE)


@dataclass(frozen=True)
class ZooEntry:
    """One embedded model.

    Args:
        name: registry name (`zoo:<name>`).
        format: the library format of the folder.
        loader: the stock class that loads the folder (no icg code needed).
        recipe: module with `train(out, *, resume, seed, config)`, `evaluate(path, world_dir)`,
            `THRESHOLDS` and a pydantic `*RecipeConfig`.
        description: one line for `icg zoo list`.
        shipped: whether the package ships its weights; False while the recipe exists but its
            long run has not been published yet (`zoo:NAME` then says how to train it).
    """

    name: str
    format: str
    loader: str
    recipe: str
    description: str
    shipped: bool = True

    @property
    def path(self) -> Path:
        """The shipped folder (it may not exist before the recipe has run)."""
        return WEIGHTS_DIR / self.name

    @property
    def trained(self) -> bool:
        """Whether the shipped folder holds a finished model (not just a checkpoint)."""
        return any((self.path / f).is_file() for f in FINISHED_MARKERS)

    def recipe_module(self) -> ModuleType:
        """Import the recipe module."""
        return importlib.import_module(self.recipe)

    @property
    def train(self) -> Callable[..., None]:
        """`train(out: Path, *, resume: bool, seed: int, config: *RecipeConfig | None) -> None`."""
        return self.recipe_module().train

    def config_class(self) -> type[BaseModel]:
        """The recipe's pydantic `*RecipeConfig` class."""
        module = self.recipe_module()
        for attr in dir(module):
            obj = getattr(module, attr)
            if (
                attr.endswith("RecipeConfig")
                and isinstance(obj, type)
                and issubclass(obj, BaseModel)
            ):
                return obj
        raise TypeError(f"{self.recipe}: expected a pydantic *RecipeConfig class, found none")

    def load_config(self, file: str | Path | None = None) -> BaseModel:
        """The recipe's configuration: defaults, overridden by the YAML `file` when given."""

        return load_config(self.config_class(), file)

    @property
    def evaluate(self) -> Callable[..., dict[str, Any]]:
        """`evaluate(path, world_dir) -> dict` of gate metrics."""
        return self.recipe_module().evaluate


REGISTRY: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="clip",
            format="transformers",
            loader="transformers.CLIPModel + CLIPTokenizer",
            recipe="icg.zoo.recipes.clip",
            description="tiny CLIP (64px ViT/8, 64-wide text tower) with a CoverWorld BPE",
        ),
        ZooEntry(
            name="sd",
            format="diffusers",
            loader="diffusers.StableDiffusionPipeline",
            recipe="icg.zoo.recipes.sd",
            description="tiny Stable-Diffusion-format pipeline on the `clip` text tower",
        ),
        ZooEntry(
            name="mllm",
            format="transformers",
            loader="transformers.AutoModelForImageTextToText + AutoProcessor",
            recipe="icg.zoo.recipes.mllm",
            description="tiny LLaVA (CLIP ViT + Qwen2 LM) describing a cover and its title",
        ),
        ZooEntry(
            name="aesthetic",
            format="diffusers-modelmixin",
            loader="icg.zoo.aesthetic.AestheticMLP (or safetensors + torch.nn.Sequential)",
            recipe="icg.zoo.recipes.aesthetic",
            description="LAION-aesthetic-predictor-shaped MLP on `clip` image embeddings",
        ),
        ZooEntry(
            name="flow",
            format="diffusers",
            loader="diffusers.StableDiffusion3Pipeline",
            recipe="icg.zoo.recipes.flow",
            description="tiny SD3-format pipeline (MMDiT, flow matching) on the `sd` VAE and "
            "the `clip` text tower",
            shipped=False,
        ),
        ZooEntry(
            name="icg-adapter",
            format="icg-adapter",
            loader="icg.models.icg_model.ICGModel / icg.pipeline.ICGPipeline .from_pretrained",
            recipe="icg.zoo.recipes.icg_adapter",
            description="ICG meta tokens + adapter for `sd` and `mllm`, pretrained IP-Adapter-style",
            shipped=False,
        ),
    )
}


def get(name: str) -> ZooEntry:
    """The entry called `name` (with or without the `zoo:` prefix)."""
    key = name.removeprefix(PREFIX)
    if key not in REGISTRY:
        raise KeyError(f"unknown zoo model {name!r}: expected one of {sorted(REGISTRY)}")
    return REGISTRY[key]


def resolve(name: str) -> str:
    """`zoo:NAME` → the shipped folder path; anything else is returned unchanged.

    Raises:
        KeyError: for an unknown `zoo:` name.
        FileNotFoundError: when the named model has not been trained into the package.
    """
    if not name.startswith(PREFIX):
        return name
    entry = get(name)
    if not entry.trained:
        raise FileNotFoundError(
            f"{name}: no weights at {entry.path}; run `icg zoo train {entry.name} --out {entry.path}`"
        )
    return str(entry.path)


def model_info(entry: ZooEntry) -> dict[str, Any]:
    """What `icg zoo list` shows for one entry: presence, parameters, size, gate results."""

    info: dict[str, Any] = {
        "name": entry.name,
        "format": entry.format,
        "loader": entry.loader,
        "present": entry.trained,
        "parameters": None,
        "size_bytes": None,
        "metrics": {},
        "thresholds": {},
        "passed": None,
    }
    if not info["present"]:
        return info
    info["size_bytes"] = folder_size(entry.path)
    gates = read_gates(entry.path)
    if gates:
        info["parameters"] = gates.get("parameters")
        info["metrics"] = gates.get("metrics", {})
        info["thresholds"] = gates.get("thresholds", {})
        info["passed"] = gates.get("passed")
    return info


def list_models() -> list[dict[str, Any]]:
    """`model_info` of every registry entry."""
    return [model_info(e) for e in REGISTRY.values()]


def train_model(
    name: str,
    out: str | Path,
    *,
    resume: bool = False,
    seed: int = 0,
    config: str | Path | None = None,
) -> Path:
    """Run the recipe of `name` into `out` (configured by the YAML `config`); returns `out`."""
    entry = get(name)
    entry.train(Path(out), resume=resume, seed=seed, config=entry.load_config(config))
    return Path(out)


def evaluate_model(
    name: str, world: str | Path | None = None, path: str | Path | None = None
) -> dict[str, Any]:
    """Gate metrics of model `name` (the shipped one unless `path`) on `world` (fresh renders
    when None), with the thresholds and whether they hold."""

    entry = get(name)
    target = str(path) if path is not None else resolve(f"{PREFIX}{entry.name}")
    metrics = entry.evaluate(target, None if world is None else Path(world))
    thresholds = entry.recipe_module().THRESHOLDS
    passed = gate_passed(metrics, thresholds)
    return {
        "name": entry.name,
        "path": target,
        "metrics": metrics,
        "thresholds": thresholds,
        "passed": passed,
    }
