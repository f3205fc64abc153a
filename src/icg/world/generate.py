"""`icg world generate`: write a CoverWorld platform folder and its hidden truth.

DIR/items.parquet, DIR/users.parquet, DIR/impressions.parquet, DIR/images/
DIR/truth/{items,users,covers,impressions}.parquet      (evaluation only)
DIR/world.yaml                                           (the resolved config)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from rich.progress import Progress

from icg.io import atomic_dir
from icg.world.attributes import MOTIFS, PALETTES, STYLE_DIMS
from icg.world.clicks import (
    ImpressionLog,
    attractiveness_logit,
    examination,
    sigmoid,
    simulate_chunks,
)
from icg.world.config import WorldConfig
from icg.world.readout import Readout, aesthetic_from_readout, concat_readouts, read
from icg.world.render import render
from icg.world.sampling import random_spec
from icg.world.seeds import world_seed
from icg.world.titles import make_title
from icg.world.truth import relevance_from_readout
from icg.world.users import make_population, taste_match

logger = logging.getLogger(__name__)


def _write(table: dict, path: Path, schema: pa.Schema | None = None) -> None:
    pq.write_table(pa.Table.from_pydict(table, schema=schema), path)


# Covers rendered and read at once: a multiple of `read`'s oracle batch (512), so that reading
# in chunks reads every cover exactly as one call over all of them would.
READ_CHUNK = 2048

IMPRESSIONS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("cover", pa.string()),
        ("position", pa.int64()),
        ("clicked", pa.bool_()),
        ("timestamp", pa.int64()),
    ]
)
TRUTH_IMPRESSIONS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("p_click", pa.float64()),
        ("examination", pa.float64()),
        ("attractiveness", pa.float64()),
    ]
)


def generate_world(
    out: Path | str,
    cfg: WorldConfig,
    overwrite: bool = False,
    chunk_impressions: int | None = None,
) -> Path:
    """Generate a world into `out` atomically: built in a temporary sibling that replaces `out`
    (an existing world, with ``overwrite``) only once complete.

    ``chunk_impressions`` bounds the impressions simulated and held at once (see
    `icg.world.clicks.simulate_chunks`); the world is the same whatever it is.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True)")
    with atomic_dir(out) as tmp:
        _generate_into(tmp, cfg, chunk_impressions)
    return out


def _render_and_read(root: Path, specs: list, paths: list[str], size: int) -> Readout:
    """Render every cover to `root/path` and read it, `READ_CHUNK` covers at a time."""
    parts = []
    with Progress(transient=True) as progress:
        task = progress.add_task("rendering covers", total=len(specs))
        for start in range(0, len(specs), READ_CHUNK):
            chunk = specs[start : start + READ_CHUNK]
            images = np.empty((len(chunk), size, size, 3), dtype=np.uint8)
            for k, spec in enumerate(chunk):
                images[k] = render(spec, size)
                Image.fromarray(images[k]).save(root / paths[start + k], compress_level=1)
                progress.advance(task)
            parts.append(read(images))
    return concat_readouts(parts)


class _ImpressionWriter:
    """Appends simulated chunks to impressions.parquet and truth/impressions.parquet."""

    def __init__(self, root: Path, user_ids: list[str], item_ids: list[str], var_paths) -> None:
        self.users = np.array(user_ids, dtype=object)
        self.items = np.array(item_ids, dtype=object)
        self.var_paths = var_paths  # (I, V) object array of cover paths
        self.public = pq.ParquetWriter(root / "impressions.parquet", IMPRESSIONS_SCHEMA)
        self.truth = pq.ParquetWriter(
            root / "truth" / "impressions.parquet", TRUTH_IMPRESSIONS_SCHEMA
        )
        self.n = 0
        self.clicks = 0

    def write(self, log: ImpressionLog, attractiveness: np.ndarray, decay: float) -> None:
        events = [f"e{k:08d}" for k in range(self.n, self.n + len(log.user))]
        public = {
            "event_id": events,
            "user_id": self.users[log.user],
            "item_id": self.items[log.item],
            "cover": self.var_paths[log.item, log.variant],
            "position": log.position.astype(np.int64),
            "clicked": log.clicked,
            "timestamp": log.timestamp.astype(np.int64),
        }
        self.public.write_table(pa.Table.from_pydict(public, schema=IMPRESSIONS_SCHEMA))
        truth = {
            "event_id": events,
            "p_click": log.p_click,
            "examination": examination(log.position, decay),
            "attractiveness": attractiveness,
        }
        self.truth.write_table(pa.Table.from_pydict(truth, schema=TRUTH_IMPRESSIONS_SCHEMA))
        self.n += len(log.user)
        self.clicks += int(log.clicked.sum())

    def close(self) -> None:
        self.public.close()
        self.truth.close()


def _generate_into(root: Path, cfg: WorldConfig, chunk_impressions: int | None = None) -> None:
    rng = np.random.default_rng(world_seed(cfg.seed))
    (root / "images" / "ref").mkdir(parents=True)
    (root / "images" / "var").mkdir(parents=True)
    (root / "truth").mkdir()
    n_i, n_v, size = cfg.n_items, cfg.n_variants, cfg.image_size

    # items: content, title, category, popularity, a reference cover and platform variants
    motif = rng.integers(len(MOTIFS), size=n_i)
    palette = rng.integers(len(PALETTES), size=n_i)
    titles = [make_title(int(m), int(p), rng) for m, p in zip(motif, palette, strict=True)]
    category = rng.integers(len(cfg.categories), size=n_i)
    popularity = rng.normal(0, cfg.popularity_std, n_i)
    item_ids = [f"i{i:05d}" for i in range(n_i)]
    specs, paths, owners, kinds = [], [], [], []
    for i in range(n_i):
        specs.append(random_spec(rng, int(motif[i]), int(palette[i]), cfg.reference_defect_rate))
        paths.append(f"images/ref/{item_ids[i]}.png")
        owners.append(i)
        kinds.append("reference")
        for v in range(n_v):
            specs.append(random_spec(rng, int(motif[i]), int(palette[i]), cfg.variant_defect_rate))
            paths.append(f"images/var/{item_ids[i]}_v{v}.png")
            owners.append(i)
            kinds.append("variant")
    readout = _render_and_read(root, specs, paths, size)
    owners_a = np.array(owners)
    cover_rel = relevance_from_readout(readout, motif[owners_a], palette[owners_a])
    cover_aes = aesthetic_from_readout(readout)
    is_var = np.array(kinds) == "variant"
    var_idx = np.flatnonzero(is_var).reshape(n_i, n_v)  # (I, V) rows of the variants

    # users
    pop = make_population(cfg, rng)
    user_ids = [f"u{u:05d}" for u in range(cfg.n_users)]
    active = np.flatnonzero(~pop.cold_start)
    if len(active) == 0:
        raise ValueError("every user is cold-start; lower cold_start_fraction or add users")

    def logit_fn(u, i, v):
        rows = var_idx[i, v]
        match = taste_match(readout.style[rows], pop.taste[u], pop.weights[u])
        return attractiveness_logit(
            cfg, cover_rel[rows], cover_aes[rows], match, popularity[i], pop.bias[u]
        )

    brightness = readout.style[var_idx, STYLE_DIMS.index("brightness")]  # (I, V)
    var_paths = np.array(paths, dtype=object)[var_idx]  # (I, V)
    writer = _ImpressionWriter(root, user_ids, item_ids, var_paths)
    try:
        for log in simulate_chunks(
            cfg, rng, active, popularity, brightness, logit_fn, chunk_impressions
        ):
            attractiveness = sigmoid(logit_fn(log.user, log.item, log.variant))
            writer.write(log, attractiveness, cfg.position_decay)
    finally:
        writer.close()

    _write(
        {
            "item_id": item_ids,
            "title": titles,
            "category": [cfg.categories[c] for c in category],
            "image": [f"images/ref/{i}.png" for i in item_ids],
        },
        root / "items.parquet",
    )
    _write(
        {"user_id": user_ids, "embedding": [e.tolist() for e in pop.embedding]},
        root / "users.parquet",
        pa.schema([("user_id", pa.string()), ("embedding", pa.list_(pa.float32()))]),
    )
    # truth
    _write(
        {
            "item_id": item_ids,
            "motif": motif,
            "palette": palette,
            "motif_name": [MOTIFS[m] for m in motif],
            "palette_name": [PALETTES[p] for p in palette],
            "popularity": popularity,
        },
        root / "truth" / "items.parquet",
    )
    _write(
        {
            "user_id": user_ids,
            "segment": pop.segment,
            "taste": pop.taste.tolist(),
            "weights": pop.weights.tolist(),
            "bias": pop.bias,
            "cold_start": pop.cold_start,
        },
        root / "truth" / "users.parquet",
    )
    style_levels = np.array([s.style for s in specs])
    _write(
        {
            "cover": paths,
            "item_id": [item_ids[o] for o in owners],
            "kind": kinds,
            "motif": motif[owners_a],
            "palette": palette[owners_a],
            **{f"style_{d}": style_levels[:, k] for k, d in enumerate(STYLE_DIMS)},
            "blur": [s.defects.blur for s in specs],
            "noise": [s.defects.noise for s in specs],
            "fade": [s.defects.fade for s in specs],
            "relevance": cover_rel,
            "aesthetic": cover_aes,
        },
        root / "truth" / "covers.parquet",
    )
    (root / "world.yaml").write_text(cfg.to_yaml())
    logger.info(
        "world: %d items, %d users (%d cold-start), %d impressions, CTR %.3f",
        n_i, cfg.n_users, int(pop.cold_start.sum()), writer.n, writer.clicks / max(writer.n, 1),
    )  # fmt: skip
