"""The oracle attribute classifier: reads motif and layout-type style levels off pixels.

It trains on ORACLE-seed renders only (no other model ever sees them) and is shipped with the
package under `icg/world/oracle/`. Only the truth API uses it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import nn

from icg.io import atomic_dir
from icg.seeding import seed_everything
from icg.world.attributes import MOTIFS, STYLE_DIMS, STYLE_LEVELS
from icg.world.degrade import random_degradation
from icg.world.sampling import sample_covers
from icg.world.seeds import oracle_seed

logger = logging.getLogger(__name__)

ORACLE_DIR = Path(__file__).parent / "oracle"
HEAD_DIMS = ("scale", "layout", "frame", "texture")  # style read by the network
INPUT_SIZE = 64


class OracleNet(nn.Module):
    """A small CNN with one head for motifs and one per style dimension in HEAD_DIMS.

    Input: float (B, 3, 64, 64) in [0, 1]. Output: dict name -> logits (B, classes).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = w = width

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, stride=stride),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(3, w, 1),  # (B, w, 64, 64)
            *block(w, 2 * w, 2),  # (B, 2w, 32, 32)
            *block(2 * w, 2 * w, 1),
            *block(2 * w, 4 * w, 2),  # (B, 4w, 16, 16)
            *block(4 * w, 4 * w, 2),  # (B, 4w, 8, 8)
            *block(4 * w, 4 * w, 2),  # (B, 4w, 4, 4)
            nn.Flatten(),
            nn.Linear(4 * w * 16, 128),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict(
            {"motif": nn.Linear(128, len(MOTIFS))}
            | {d: nn.Linear(128, len(STYLE_LEVELS[d])) for d in HEAD_DIMS}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)  # (B, 128)
        return {name: head(h) for name, head in self.heads.items()}


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, 64, 64) in [0, 1], resized if needed."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != INPUT_SIZE or x.shape[-2] != INPUT_SIZE:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return x


def _targets(sample) -> dict[str, torch.Tensor]:
    out = {"motif": torch.from_numpy(sample.motif)}
    for d in HEAD_DIMS:
        out[d] = torch.from_numpy(sample.style[:, STYLE_DIMS.index(d)])
    return out


def train_oracle(
    out: Path = ORACLE_DIR, n_train: int = 16000, epochs: int = 5, seed: int = 0
) -> dict[str, float]:
    """Train the oracle on ORACLE-seed renders and save it (safetensors + config.json).

    Every batch is degraded at random (`icg.world.degrade.random_degradation`: blur, JPEG,
    noise, resampling, or nothing), so the truth reads generated covers as it reads renders.
    Returns the accuracy per head on fresh ORACLE-seed renders (never used for training).
    """
    seed_everything(seed)
    start = time.perf_counter()
    train = sample_covers(n_train, seed=oracle_seed(2 * seed), defect_rate=0.4)
    test = sample_covers(4000, seed=oracle_seed(2 * seed + 1), defect_rate=0.4)
    y_all = _targets(train)
    rng = np.random.default_rng(oracle_seed(2 * seed))
    net = OracleNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = 128
    steps = epochs * (n_train // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    with Progress() as progress:
        task = progress.add_task("oracle", total=steps)
        for _ in range(epochs):
            perm = torch.randperm(n_train, generator=gen)
            for i in range(n_train // batch):
                idx = perm[i * batch : (i + 1) * batch]
                # generated covers are soft, compressed, noisy: read them as a person would
                logits = net(to_input(random_degradation(train.images[idx.numpy()], rng)))
                loss = sum(F.cross_entropy(logits[k], y_all[k][idx]) for k in logits)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                progress.advance(task)
    net.eval()
    acc = evaluate_oracle(net, test)
    acc["train_seconds"] = round(time.perf_counter() - start, 1)
    save_oracle(net, out, acc)
    logger.info("oracle accuracy on fresh renders: %s", acc)
    return acc


@torch.no_grad()
def evaluate_oracle(net: OracleNet, sample) -> dict[str, float]:
    logits = net(to_input(sample.images))
    targets = _targets(sample)
    return {k: float((logits[k].argmax(-1) == targets[k]).float().mean()) for k in logits}


def save_oracle(net: OracleNet, out: Path, metrics: dict[str, float]) -> None:
    with atomic_dir(out) as tmp:
        weights = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(weights, tmp / "model.safetensors")
        config = {"width": net.width, "heads": ["motif", *HEAD_DIMS], "accuracy": metrics}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))


def load_oracle(path: Path = ORACLE_DIR) -> OracleNet:
    """Load the shipped oracle (eval mode, frozen)."""
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"no oracle at {path}; train it with `icg world train-oracle`")
    config = json.loads((path / "config.json").read_text())
    net = OracleNet(width=config["width"])
    net.load_state_dict(load_file(path / "model.safetensors"))
    net.eval().requires_grad_(False)
    return net


def oracle_accuracy(path: Path = ORACLE_DIR) -> dict[str, float]:
    """The accuracy recorded when the shipped oracle was trained."""
    return json.loads((path / "config.json").read_text())["accuracy"]
