"""Fault injection, weights side (SECURITY.md "Nothing is unpickled"): a folder the user names
(base, adapter, MLLM, CLIP, or the base an ``icg_config.json`` records) that holds pickle-format
weights is refused with one message naming the file, before any loader, and so before
``torch.load``, sees it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from icg.artifacts import ArtifactError, refuse_pickle_weights
from icg.cli import build_app
from icg.data.testing import write_tiny_dataset
from icg.layout import ICG_CONFIG_FILE
from icg.models.icg_model import FORMAT, FORMAT_VERSION, REQUIRED_PARTS
from icg.models.mllm import load_mllm
from icg.models.paths import resolve_model_path
from icg.pipeline import ICGPipeline
from icg.rewards.clip import ClipTowers


@pytest.fixture(autouse=True)
def no_torch_load(monkeypatch):
    """Any call to ``torch.load`` fails the test: the refusal must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load reached with {args!r}")

    monkeypatch.setattr(torch, "load", refuse)


def pickle_folder(root: Path, rel: str) -> Path:
    """A model folder whose only weights are a pickle file at ``rel`` (a pickled dict)."""
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (root / rel).write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle protocol-4 header
    return root


def adapter_naming(folder: Path, base: Path) -> Path:
    """An adapter folder whose ``icg_config.json`` records ``base`` as its base model."""
    folder.mkdir(parents=True)
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "parts": list(REQUIRED_PARTS),
        "base_model": str(base),
        "mllm": None,
    }
    (folder / ICG_CONFIG_FILE).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "rel", ["unet/diffusion_pytorch_model.bin", "model.ckpt", "weights.pt", "vae/w.pth"]
)
def test_a_recorded_base_folder_of_pickles_is_refused_before_any_loader(tmp_path, rel):
    base = pickle_folder(tmp_path / "base", rel)
    adapter = adapter_naming(tmp_path / "adapter", base)
    with pytest.raises(ArtifactError) as err:
        ICGPipeline.from_pretrained(adapter)
    message = str(err.value)
    assert rel in message and "safetensors" in message and "\n" not in message
    assert "<" not in message  # no object reprs


def test_every_named_folder_is_checked(tmp_path):
    mllm = pickle_folder(tmp_path / "mllm", "pytorch_model.bin")
    clip = pickle_folder(tmp_path / "clip", "pytorch_model.bin")
    with pytest.raises(ArtifactError, match=r"^mllm .*pytorch_model\.bin"):
        load_mllm(str(mllm))
    with pytest.raises(ArtifactError, match=r"^clip .*pytorch_model\.bin"):
        ClipTowers.from_pretrained(str(clip))
    with pytest.raises(ArtifactError, match="pytorch_model.bin"):
        resolve_model_path(str(mllm))
    ckpt = tmp_path / "sd.ckpt"
    ckpt.write_bytes(b"\x80\x04")
    with pytest.raises(ArtifactError, match=r"sd\.ckpt"):
        resolve_model_path(str(ckpt))
    adapter = adapter_naming(tmp_path / "adapter", tmp_path / "nowhere")
    (adapter / "optimizer.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ArtifactError, match=r"^adapter .*optimizer\.pt"):
        ICGPipeline.from_pretrained(adapter)


def test_safetensors_folders_hidden_folders_and_hub_ids_pass(tmp_path):
    good = tmp_path / "good"
    (good / "unet").mkdir(parents=True)
    (good / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (good / ".git").mkdir()
    (good / ".git" / "old.bin").write_bytes(b"")  # not what a loader reads
    refuse_pickle_weights(good)
    assert resolve_model_path(str(good)) == str(good)
    assert resolve_model_path("org/some-model") == "org/some-model"  # the loader's business


def test_icg_generate_names_the_pickle_without_a_traceback(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    base = pickle_folder(tmp_path / "base", "unet/diffusion_pytorch_model.bin")
    adapter = adapter_naming(tmp_path / "adapter", base)
    args = ["generate", "--adapter", str(adapter), "--data", str(data)]
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        build_app(), [*args, "--out", str(tmp_path / "out")]
    )
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit)
    assert "holds pickle-format weights (unet/diffusion_pytorch_model.bin)" in result.output
