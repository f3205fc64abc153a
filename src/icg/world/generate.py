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
from icg.world.clicks import attractiveness_logit, examination, sigmoid, simulate
from icg.world.config import WorldConfig
from icg.world.readout import aesthetic_from_readout, read
from icg.world.render import render
from icg.world.sampling import random_spec
from icg.world.seeds import world_seed
from icg.world.titles import make_title
from icg.world.truth import relevance_from_readout
from icg.world.users import make_population, taste_match

logger = logging.getLogger(__name__)


def _write(table: dict, path: Path, schema: pa.Schema | None = None) -> None:
    pq.write_table(pa.Table.from_pydict(table, schema=schema), path)


def generate_world(out: Path | str, cfg: WorldConfig, overwrite: bool = False) -> Path:
    """Generate a world into `out` atomically: built in a temporary sibling that replaces `out`
    (an existing world, with ``overwrite``) only once complete."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True)")
    with atomic_dir(out) as tmp:
        _generate_into(tmp, cfg)
    return out


def _generate_into(root: Path, cfg: WorldConfig) -> None:
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
    images = np.empty((len(specs), size, size, 3), dtype=np.uint8)
    with Progress(transient=True) as progress:
        task = progress.add_task("rendering covers", total=len(specs))
        for k, (spec, rel) in enumerate(zip(specs, paths, strict=True)):
            images[k] = render(spec, size)
            Image.fromarray(images[k]).save(root / rel, compress_level=1)
            progress.advance(task)

    readout = read(images)
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
    log = simulate(cfg, rng, active, popularity, brightness, logit_fn)
    event_ids = [f"e{k:08d}" for k in range(len(log.user))]
    var_paths = np.array(paths)[var_idx]  # (I, V)

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
    _write(
        {
            "event_id": event_ids,
            "user_id": [user_ids[u] for u in log.user],
            "item_id": [item_ids[i] for i in log.item],
            "cover": var_paths[log.item, log.variant].tolist(),
            "position": log.position.astype(np.int64),
            "clicked": log.clicked,
            "timestamp": log.timestamp.astype(np.int64),
        },
        root / "impressions.parquet",
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
    _write(
        {
            "event_id": event_ids,
            "p_click": log.p_click,
            "examination": examination(log.position, cfg.position_decay),
            "attractiveness": sigmoid(logit_fn(log.user, log.item, log.variant)),
        },
        root / "truth" / "impressions.parquet",
    )
    (root / "world.yaml").write_text(cfg.to_yaml())
    logger.info(
        "world: %d items, %d users (%d cold-start), %d impressions, CTR %.3f",
        n_i, cfg.n_users, int(pop.cold_start.sum()), len(log.user), float(log.clicked.mean()),
    )  # fmt: skip
