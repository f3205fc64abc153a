"""Fault injection, runs and artifacts (SECURITY.md): reruns into used folders, resumes of another
run, foreign checkpoint names, broken configs and weights, torn logs. Each ends in a message that
names the file and the problem; nothing outside the run folder changes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hostile_fixtures import Workspace
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from icg.artifacts import ArtifactError
from icg.checkpoints import latest_checkpoint, list_checkpoints, load_weights, save_checkpoint
from icg.cli import build_app
from icg.models.preference import PreferenceModel
from icg.models.user_refiner import UserRefiner
from icg.runs import RUN_FILE, RunConfigError, start_run
from icg.safety import OutputExistsError, UnsafePathError
from icg.training.align import AlignConfig
from icg.training.curves import append_curve, read_curves, truncate_curves


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def align_config(ws: Workspace, **kw) -> AlignConfig:
    return AlignConfig(data=ws.data, out=ws.out, max_steps=4, targets="clicks", **kw)


def fake_checkpoint(ws: Workspace, cfg: AlignConfig, step: int) -> Path:
    """A checkpoint as the align recipe writes it (trainer state with the run's config)."""
    state = {"step": step, "losses": [], "config": cfg.model_dump(mode="json")}
    return save_checkpoint(ws.out / "checkpoints", step, state=state)


# ---- runs ----------------------------------------------------------------------------------------
def test_resume_refuses_another_config_and_names_the_fields(ws: Workspace):
    cfg = align_config(ws)
    record = start_run(ws.out, cfg, kind="align")
    assert json.loads((ws.out / RUN_FILE).read_text())["config_hash"] == record["config_hash"]
    fake_checkpoint(ws, cfg, 2)
    other = align_config(ws, learning_rate=1e-3, seed=5)
    with pytest.raises(RunConfigError, match=r"learning_rate: 0.0003 -> 0.001; seed: 0 -> 5"):
        start_run(ws.out, other, kind="align", resume=True)
    with pytest.raises(RunConfigError, match="different config"):
        start_run(ws.out, other, kind="align")  # a fresh run may not mix in either
    longer = align_config(ws).model_copy(update={"max_steps": 40, "checkpoint_every": 5})
    start_run(ws.out, longer, kind="align", resume=True)  # training longer is the same run
    with pytest.raises(OutputExistsError, match="pass --resume to continue it"):
        start_run(ws.out, cfg, kind="align")  # would prune its own new checkpoints
    with pytest.raises(ValueError, match="exclude each other"):
        start_run(ws.out, cfg, kind="align", resume=True, overwrite=True)
    assert ws.unchanged()


def test_resume_continues_a_run_recorded_before_a_setting_was_added(ws: Workspace):
    cfg = align_config(ws)
    start_run(ws.out, cfg, kind="align")
    fake_checkpoint(ws, cfg, 2)
    record = json.loads((ws.out / RUN_FILE).read_text())
    del record["config"]["read_image"]  # as written by a version without the setting
    record["config_hash"] = "0" * 16
    (ws.out / RUN_FILE).write_text(json.dumps(record))
    start_run(ws.out, cfg, kind="align", resume=True)  # left at its default: the same run
    (ws.out / RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(RunConfigError, match="read_image: None -> False"):
        start_run(ws.out, align_config(ws, read_image=False), kind="align", resume=True)


def test_resume_refuses_a_checkpoint_written_by_another_run(ws: Workspace):
    cfg = align_config(ws)
    start_run(ws.out, cfg, kind="align")
    fake_checkpoint(ws, align_config(ws, batch_size=2), 8)  # copied in from elsewhere
    with pytest.raises(RunConfigError, match=r"checkpoint-00000008: written by a run with a dif"):
        start_run(ws.out, cfg, kind="align", resume=True)
    (ws.out / RUN_FILE).unlink()  # a run from before run.json: the checkpoint config decides
    with pytest.raises(RunConfigError, match="batch_size: 2 -> 8"):
        start_run(ws.out, cfg, kind="align", resume=True)


def test_fresh_run_into_a_used_folder_needs_overwrite_which_removes_only_the_old_run(
    ws: Workspace,
):
    cfg = align_config(ws)
    ws.out.mkdir()
    (ws.out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"holds notes.txt\) and records no icg run"):
        start_run(ws.out, cfg, kind="align")
    fake_checkpoint(ws, align_config(ws, seed=9), 100)
    (ws.out / "curves.jsonl").write_text('{"step": 100}\n')
    (ws.out / "checkpoints" / ".tmp-checkpoint-00000200-x").mkdir()
    start_run(ws.out, cfg, kind="align", overwrite=True)
    assert sorted(p.name for p in ws.out.iterdir()) == ["notes.txt", RUN_FILE]
    with pytest.raises(UnsafePathError, match="inside the input folder"):
        start_run(ws.data / "run", align_config(ws).model_copy(update={"out": ws.data / "r"}),
                  kind="align")  # fmt: skip
    with pytest.raises(RunConfigError, match="unreadable run record"):
        (ws.out / RUN_FILE).write_text("{torn")
        start_run(ws.out, cfg, kind="align", resume=True)
    assert ws.unchanged()


def test_train_cli_refusals_are_one_line_without_traceback(ws: Workspace):
    ws.out.mkdir()
    (ws.out / "keep.txt").write_text("x")
    args = ["train", "align", "--data", str(ws.data), "--max-steps", "1", "--targets", "clicks"]
    result = CliRunner().invoke(build_app(), [*args, "--out", str(ws.out)])
    assert result.exit_code == 1 and result.output.startswith("error: --out")
    result = CliRunner().invoke(build_app(), [*args, "--out", str(ws.data / "run")])
    assert result.exit_code == 1 and "inside the input folder" in result.output
    assert "Traceback" not in result.output and ws.unchanged()


# ---- checkpoints -----------------------------------------------------------------------------
def test_checkpoint_discovery_ignores_foreign_names_and_saves_keep_working(ws: Workspace):
    folder = ws.out / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "checkpoint-00000999").mkdir()  # right name, no trainer state
    (folder / "checkpoint-00000998").write_text("a file")
    (folder / "checkpoint-latest").mkdir()
    os.symlink(ws.outside, folder / "checkpoint-00000997")
    for step in (1, 2, 3):
        save_checkpoint(folder, step, state={"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(folder)] == [
        "checkpoint-00000002",
        "checkpoint-00000003",
    ]
    assert latest_checkpoint(folder).name == "checkpoint-00000003"
    assert (folder / "checkpoint-00000999").is_dir() and ws.unchanged()


# ---- artifacts -------------------------------------------------------------------------------
@pytest.fixture
def refiner_dir(tmp_path: Path) -> Path:
    UserRefiner(feature_dim=8, user_dim=4, hidden_dim=4).save_pretrained(tmp_path / "refiner")
    return tmp_path / "refiner"


WEIGHTS = "diffusion_pytorch_model.safetensors"


def test_broken_model_folders_name_file_and_problem(refiner_dir: Path):
    UserRefiner.from_pretrained(refiner_dir)  # intact: loads
    weights = refiner_dir / WEIGHTS
    tensors = load_file(weights)
    key = sorted(tensors)[0]
    cases = {
        "NaN or infinite": {**tensors, key: torch.full_like(tensors[key], float("nan"))},
        "missing tensor": {k: v for k, v in tensors.items() if k != key},
        "unexpected tensor": {**tensors, "extra.weight": torch.zeros(2)},
        "has shape": {**tensors, key: torch.zeros(3, 3, 3)},
    }
    for message, broken in cases.items():
        save_file(broken, weights)
        with pytest.raises(ArtifactError, match=message) as err:
            UserRefiner.from_pretrained(refiner_dir)
        assert WEIGHTS in str(err.value)
    save_file(tensors, weights)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or not a safetensors file"):
        UserRefiner.from_pretrained(refiner_dir)
    weights.write_bytes(data)
    config = refiner_dir / "config.json"
    for text, message in (
        ("{torn", "not valid JSON"),
        ("[1, 2]", "expected the UserRefiner config, got a JSON list"),
        ('{"feature_dim": "eight"}', "not a valid UserRefiner config"),
        ('{"_class_name": "CoverAdapter"}', "describes a CoverAdapter"),
    ):
        config.write_text(text)
        with pytest.raises(ArtifactError, match=message):
            UserRefiner.from_pretrained(refiner_dir)
    with pytest.raises(ArtifactError, match="missing"):
        PreferenceModel.from_pretrained(str(refiner_dir.parent / "nothing-here"))


def test_icg_config_and_missing_parts_are_artifact_errors(tmp_path: Path, refiner_dir: Path):
    from icg.models.icg_model import ICGModel

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "icg_config.json").write_text("{bad json")
    with pytest.raises(ArtifactError, match=r"icg_config.json: not valid JSON"):
        ICGModel.from_pretrained(folder, mllm="never-loaded")
    record = {"format": "icg-adapter", "version": 1, "base_model": None, "mllm": None}
    (folder / "icg_config.json").write_text(json.dumps({**record, "parts": ["adapter"]}))
    with pytest.raises(ArtifactError, match="'parts' must list"):
        ICGModel.from_pretrained(folder, mllm="never-loaded")
    parts = ["meta_tokens", "adapter", "refiner"]
    (folder / "icg_config.json").write_text(json.dumps({**record, "parts": parts}))
    with pytest.raises(ArtifactError, match="meta_tokens: missing"):  # before any MLLM loads
        ICGModel.from_pretrained(folder, mllm="never-loaded")


def test_checkpoint_weights_and_reward_stats_are_checked(ws: Workspace):
    from icg.rewards.combined import MultiReward

    module = torch.nn.Linear(2, 2)
    ckpt = save_checkpoint(ws.out, 1, state={"step": 1}, weights={"head": module})
    tensors = load_file(ckpt / "head.safetensors")
    save_file({**tensors, "weight": tensors["weight"] * float("inf")}, ckpt / "head.safetensors")
    with pytest.raises(ArtifactError, match="'weight' holds NaN or infinite"):
        load_weights(ckpt, "head", module)
    reward = MultiReward({"a": torch.nn.Identity()})
    reward.save_stats(ws.out / "stats.safetensors")
    reward.load_stats(ws.out / "stats.safetensors")
    other = MultiReward({"b": torch.nn.Identity()})
    with pytest.raises(ArtifactError, match=r"missing tensor\(s\) \['b.count'"):
        other.load_stats(ws.out / "stats.safetensors")
    (ws.out / "stats.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(ArtifactError, match="truncated or not a safetensors"):
        reward.load_stats(ws.out / "stats.safetensors")


# ---- logs ------------------------------------------------------------------------------------
def test_torn_and_hostile_curve_lines_are_skipped_and_appends_stay_whole(tmp_path: Path):
    curves = tmp_path / "curves.jsonl"
    append_curve(curves, {"step": 1, "loss": 0.5})
    with curves.open("ab") as f:  # a killed run: half a line, no newline
        f.write(b'{"step": 2, "lo')
    append_curve(curves, {"step": 2, "loss": 0.4})  # starts a new line, not glued to the torn one
    with curves.open("ab") as f:
        f.write(b'{"step": "3"}\n\xff\xfe\n[1]\n')
    assert [r["step"] for r in read_curves(curves)] == [1, 2]
    truncate_curves(curves, 1)
    assert [r["step"] for r in read_curves(curves)] == [1]
