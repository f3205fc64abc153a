"""Stage B under accelerate: two CPU processes (gloo) draw different pairs but stay in sync."""

from __future__ import annotations

import json

import torch
from stage_b_fixtures import stage_b_config as _config
from stage_b_fixtures import stage_b_parts as _parts

from icg.training.draft import DraftTrainer


def _worker(world_paths, out):
    from accelerate.state import AcceleratorState

    # a fork inherits the parent's (single-process) accelerate singletons from earlier tests
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(1)
    cfg = _config(world_paths, out, max_steps=2, checkpoint_every=2, num_inference_steps=2)
    recipe = DraftTrainer(cfg, **_parts())
    recipe.setup()
    items = recipe.draw(0)["items"] + [str(u) for u in recipe.draw(0)["users"]]
    recipe.train()
    recipe.save()
    flat = torch.cat([p.detach().flatten() for p in recipe.trainable_parameters()])  # (P,)
    both = recipe.accelerator.gather(flat[None])  # (2, P)
    stats = torch.stack([s.count for s in recipe.rewards.stats.values()])
    rank = recipe.accelerator.process_index
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "processes": recipe.accelerator.num_processes,
                "param_gap": float((both[0] - both[1]).abs().max()),
                "moved": float(
                    (flat - torch.cat([recipe.reference[n].flatten() for n in _names(recipe)]))
                    .abs()
                    .max()
                ),
                "stats_count": stats.tolist(),
                "draw": items,
            }
        )
    )
    recipe.cleanup()


def _names(recipe) -> list[str]:
    names = {id(p): n for n, p in recipe.icg.named_parameters()}
    return [names[id(p)] for p in recipe.trainable_parameters()]


def test_two_cpu_processes_train_in_sync(stage_b_world, tmp_path):
    from accelerate.launchers import debug_launcher

    debug_launcher(_worker, args=(stage_b_world, tmp_path), num_processes=2)
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["processes"] for r in rows] == [2, 2]
    assert rows[0]["draw"] != rows[1]["draw"], "each process draws its own pairs"
    for r in rows:
        assert r["param_gap"] == 0.0, "averaged gradients keep the replicas identical"
        assert r["moved"] > 0
        # 2 steps x batch 2 x 2 processes: the statistics see both processes' batches
        assert r["stats_count"] == [8.0, 8.0, 8.0]
    assert (tmp_path / "checkpoints" / "checkpoint-00000002").is_dir()
    assert (tmp_path / "adapter" / "icg_config.json").is_file()
