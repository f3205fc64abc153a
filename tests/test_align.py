"""Stage A: pinned losses, exact resume, gradient coverage, NaN guard, atomic checkpoints, CLI."""

from __future__ import annotations

import pytest
import torch
from align_fixtures import align_config, align_parts
from model_fixtures import perturb_

from icg.checkpoints import list_checkpoints
from icg.config import load_config
from icg.data.testing import write_tiny_dataset
from icg.training.align import AlignConfig, AlignRecipe, run_align
from icg.training.common import NonFiniteLossError, batch_indices


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_dataset(
        tmp_path_factory.mktemp("data"), n_items=3, n_users=3, n_impressions=12, dim=4
    )


_parts = align_parts
_config = align_config


def test_pinned_losses_and_exact_resume(data_dir, tmp_path):
    full = run_align(_config(data_dir, tmp_path / "full"), **_parts())
    assert len(full.losses) == 4, full.losses
    torch.testing.assert_close(
        torch.tensor(full.losses[:2]), torch.tensor([1.11880, 1.18558]), atol=1e-4, rtol=0
    )
    # the user path: the losses hardly see it yet, the user effect on the tokens does
    assert full.user_effect == pytest.approx(0.077781, rel=1e-3)
    assert (full.adapter_dir / "icg_config.json").is_file()

    out = tmp_path / "split"
    first = run_align(_config(data_dir, out, max_steps=2), **_parts())
    resumed = run_align(_config(data_dir, out, max_steps=4), resume=True, **_parts())
    assert resumed.losses[:2] == first.losses
    torch.testing.assert_close(
        torch.tensor(resumed.losses), torch.tensor(full.losses), atol=1e-6, rtol=0
    )
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
        "checkpoint-00000002",
        "checkpoint-00000004",
    ]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_pinned_losses_without_user_dropout_and_refiner_lr(data_dir, tmp_path):
    """The recipe before user dropout, the refiner's own learning rate and the adapter's global
    conditioning is still reachable."""
    old = _config(
        data_dir, tmp_path, user_dropout=0.0, refiner_learning_rate=1e-2,
        global_conditioning=False, ema_decay=None,
    )  # fmt: skip
    result = run_align(old, **_parts())
    torch.testing.assert_close(
        torch.tensor(result.losses),
        torch.tensor([1.118797, 1.198909, 1.129704, 1.181418]),
        atol=1e-4,
        rtol=0,
    )
    assert result.user_effect == pytest.approx(0.010814, rel=1e-3)


def test_gradient_coverage(data_dir, tmp_path):
    parts = _parts()
    recipe = AlignRecipe(_config(data_dir, tmp_path), **parts)
    recipe.setup()
    perturb_(recipe.icg)  # move off the zero init so every branch carries gradient
    recipe.compute_loss(0).backward()
    trainable = recipe.icg.trainable_parameters()
    ids = {id(p) for p in trainable}
    for p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0
    frozen = [parts["base"].unet, parts["base"].vae, parts["base"].text_encoder, parts["mllm"]]
    for module in frozen:
        for name, p in module.named_parameters():
            if id(p) not in ids:
                assert p.grad is None and not p.requires_grad, name
    recipe.cleanup()


def test_nan_guard_stops_before_saving(data_dir, tmp_path):
    recipe = AlignRecipe(_config(data_dir, tmp_path, checkpoint_every=1), **_parts())
    recipe.setup()
    with torch.no_grad():
        recipe.icg.encoder.meta_tokens.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="at step 1; stopped before saving"):
        recipe.train()
    assert list_checkpoints(tmp_path / "checkpoints") == []
    recipe.cleanup()


def test_config_validation_and_batches(tmp_path, data_dir):
    with pytest.raises(ValueError, match="expected an existing data folder"):
        AlignConfig(data=tmp_path / "missing", out=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        AlignConfig(data=data_dir, out=tmp_path, batch_size=0)
    file = tmp_path / "a.yaml"
    file.write_text("max_steps: 7\nlearning_rate: 0.5\ntargets: clicks\n")
    cfg = load_config(AlignConfig, file, data=data_dir, out=tmp_path, max_steps=None)
    assert cfg.max_steps == 7 and cfg.learning_rate == 0.5
    seen = [i for s in range(4) for i in batch_indices(6, 3, s, seed=1)]
    assert sorted(seen[:6]) == list(range(6)) and sorted(seen[6:]) == list(range(6))
    assert batch_indices(6, 3, 2, seed=1) == batch_indices(6, 3, 2, seed=1)


def test_cli_dry_run(tmp_path, data_dir):
    from typer.testing import CliRunner

    from icg.cli import build_app

    args = ["train", "align", "--data", str(data_dir), "--out", str(tmp_path), "--dry-run"]
    result = CliRunner().invoke(build_app(), args)  # the default targets need a preference model
    assert result.exit_code != 0
    assert "targets='preferred' needs a trained preference model" in _unboxed(result.output)
    args.extend(["--targets", "clicks"])
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert '"base": "zoo:sd"' in result.output and '"max_steps": 1000' in result.output
    options = ["--user-dropout", "0.3", "--click-weighting", "ips"]
    result = CliRunner().invoke(build_app(), [*args, *options])
    assert result.exit_code != 0 and "needs a trained preference model" in _unboxed(result.output)
    result = CliRunner().invoke(build_app(), [*args, *options, "--preference", str(data_dir)])
    assert result.exit_code != 0 and "a preference model folder" in _unboxed(result.output)
    result = CliRunner().invoke(build_app(), [*args, "--user-dropout", "0.3"])
    assert result.exit_code == 0 and '"user_dropout": 0.3' in result.output
    assert '"global_conditioning": true' in result.output  # the recipe's default
    result = CliRunner().invoke(build_app(), [*args, "--no-global-conditioning"])
    assert result.exit_code == 0 and '"global_conditioning": false' in result.output
    assert '"read_image": true' in result.output
    result = CliRunner().invoke(build_app(), [*args, "--no-read-image"])
    assert result.exit_code == 0 and '"read_image": false' in result.output


def _unboxed(output: str) -> str:
    """CLI error text without rich's box characters and line wrapping."""
    return " ".join(output.replace("│", " ").split())
