"""`icg world ab`: an online A/B test of cover arms on a CoverWorld's simulated traffic.

    simulate_ab(W, {"control": "reference", "icg": "RUN/covers/manifest.parquet"}, 200_000, 0, W2)

An arm is "reference" (the items' own covers), a generation manifest (one cover per (user, item)),
or an `icg batch` output folder (each user sees their segment's cover, as the batch segmented them).
Users are randomised into arms by a hash of their id (`icg.ab.assign_arms`). Each impression is a
(user, item) pair that every arm has a cover for; it shows the cover of the user's arm, placed by
the platform's ranker (popularity plus its pull of light covers, read off the pixels shown) and
examined as the world's position model says; it is clicked with the world's click model on the
attributes the truth reads off those pixels, as evaluation reads them. W2 is a platform folder in
the world's schema (validated by `icg data validate`): generated covers are copied in as cover
variants with their own file and id, each impression names its arm, truth/ sits beside it.

Randomness comes in blocks of `BLOCK` pages, each from its own ``(seed, block)`` stream, so the
experiment is the same whatever the chunk size.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from icg.ab.randomise import assign_arms
from icg.config import load_config
from icg.data.images import load_image
from icg.io import atomic_dir
from icg.layout import PLAN_DIR, PLAN_SETTINGS_FILE, PLAN_UNITS_FILE, PLAN_USERS_FILE
from icg.safety import OutputExistsError, output_path, safe_name
from icg.segments import segment
from icg.world.attributes import STYLE_DIMS
from icg.world.clicks import examination
from icg.world.config import WorldConfig
from icg.world.generate import IMPRESSIONS_SCHEMA, TRUTH_IMPRESSIONS_SCHEMA
from icg.world.readout import Readout, read
from icg.world.truth import Truth

logger = logging.getLogger(__name__)

BLOCK = 64  # pages per random stream
READ_CHUNK = 2048  # distinct covers read off at once
REFERENCE = "reference"
AB_SCHEMA = IMPRESSIONS_SCHEMA.append(pa.field("arm", pa.string())).append(
    pa.field("cover_id", pa.string())
)


def arm_covers(world: Path, name: str, spec: str) -> pd.DataFrame:
    """The covers of one arm: user_id (None: every user), item_id, path (absolute), cover_id,
    file (the name a shown generated cover is copied to under images/ab/<arm>/).

    Args:
        world: the world folder.
        name: the arm's name; it picks the manifest's method when the manifest has several.
        spec: "reference" (the item's own cover), a generation manifest.parquet, or an
            `icg batch` output folder (`batch_covers`).
    """
    if spec == REFERENCE:
        items = pd.read_parquet(world / "items.parquet")
        return pd.DataFrame({
            "user_id": None, "item_id": items["item_id"],
            "path": [str(world / p) for p in items["image"]],
            "cover_id": "ref:" + items["item_id"], "file": "",
        })  # fmt: skip
    if Path(spec).is_dir():
        return batch_covers(world, name, Path(spec))
    manifest = pd.read_parquet(spec)
    missing = {"user_id", "item_id", "method", "path"} - set(manifest.columns)
    if missing:
        raise ValueError(f"--arm {name}={spec}: manifest lacks columns {sorted(missing)}")
    methods = sorted(manifest["method"].unique())
    if name in methods:
        manifest = manifest[manifest["method"] == name]
    elif len(methods) != 1:
        raise ValueError(f"--arm {name}={spec}: the manifest holds methods {methods}; name the "
                         "arm after one of them")  # fmt: skip
    paths = [Path(p) if Path(p).is_absolute() else Path(spec).parent / p for p in manifest["path"]]
    users, items = manifest["user_id"].astype(str), manifest["item_id"].astype(str)
    return pd.DataFrame({
        "user_id": users.to_numpy(), "item_id": items.to_numpy(), "path": [str(p) for p in paths],
        "cover_id": [f"{name}:{u}:{i}" for u, i in zip(users, items, strict=True)],
        "file": [f"{safe_name(u)}_{safe_name(i)}.png" for u, i in zip(users, items, strict=True)],
    })  # fmt: skip


def batch_covers(world: Path, name: str, out: Path) -> pd.DataFrame:
    """The covers of a batch arm: every user the batch planned for sees their segment's cover
    of each item (the candidate the batch kept), with the batch's own segments (OUT/plan/).

    The batch must have run on this world's users and items: its users are segmented again as
    the batch did (`icg.segments.segment`, the settings in OUT/plan/settings.json) and must fall
    in the same segments, and its items must carry the world's titles.
    """
    # deferred: icg.batch's package init loads the pipeline and the rewards; only batch arms
    # need its manifest reader
    from icg.batch.manifest import read_manifest

    arm = f"--arm {name}={out}"
    plan = out / PLAN_DIR
    if not (plan / PLAN_USERS_FILE).is_file() or not (plan / PLAN_SETTINGS_FILE).is_file():
        raise FileNotFoundError(f"{arm}: not an icg batch output (no {PLAN_DIR}/{PLAN_USERS_FILE}"
                                f" and {PLAN_DIR}/{PLAN_SETTINGS_FILE})")  # fmt: skip
    settings = json.loads((plan / PLAN_SETTINGS_FILE).read_text(encoding="utf-8"))
    planned = pd.read_parquet(plan / PLAN_USERS_FILE).astype({"user_id": str})  # user_id, segment
    users = pd.read_parquet(world / "users.parquet").astype({"user_id": str})
    unknown = sorted(set(planned["user_id"]) - set(users["user_id"]))
    if unknown:
        raise ValueError(f"{arm}: the batch's segments hold {len(unknown)} users this world does "
                         f"not have (e.g. {unknown[:3]}): it ran on other data "
                         f"({settings.get('data')})")  # fmt: skip
    by = settings.get("segment_by", "kmeans")
    mine = users[users["user_id"].isin(planned["user_id"])]
    try:
        again = segment(mine, by, int(settings.get("segments", 16)), int(settings.get("seed", 0)))
    except ValueError as err:
        raise ValueError(
            f"{arm}: this world's users cannot be segmented as the batch was: {err}"
        ) from err
    # the same partition of users (labels may be numbered apart): one label each way
    both = planned.merge(again.users, on="user_id", suffixes=("", "_world"))
    pairs = both[["segment", "segment_world"]].drop_duplicates()
    if pairs["segment"].duplicated().any() or pairs["segment_world"].duplicated().any():
        kept = both.groupby("segment")["segment_world"].agg(lambda s: s.value_counts().iloc[0])
        moved = len(both) - int(kept.sum())
        raise ValueError(f"{arm}: the batch's segments do not match this world's users: "
                         f"segmented as the batch did (segment_by={by}, "
                         f"segments={settings.get('segments')}, seed={settings.get('seed')}), "
                         f"{moved} of {len(both)} users fall in other segments; was the batch "
                         f"run on another world's data ({settings.get('data')})?")  # fmt: skip
    manifest = read_manifest(out)
    if manifest.empty:
        raise ValueError(f"{arm}: the batch's manifest holds no finished partition")
    units = pd.read_parquet(plan / PLAN_UNITS_FILE, columns=["item_id", "title"])
    titles = pd.read_parquet(world / "items.parquet").set_index("item_id")["title"]
    units = units.drop_duplicates("item_id")
    wrong = units[~units["item_id"].isin(titles.index)]
    wrong = wrong if len(wrong) else units[titles.reindex(units["item_id"]).to_numpy()
                                           != units["title"].to_numpy()]  # fmt: skip
    if len(wrong):
        raise ValueError(f"{arm}: the batch's item {wrong['item_id'].iloc[0]!r} "
                         f"({wrong['title'].iloc[0]!r}) is not this world's: it ran on other "
                         f"data ({settings.get('data')})")  # fmt: skip
    rows = planned.merge(manifest[["segment", "item_id", "path"]], on="segment")
    seg, items = rows["segment"].astype(int), rows["item_id"].astype(str)
    return pd.DataFrame({
        "user_id": rows["user_id"].to_numpy(), "item_id": items.to_numpy(),
        "path": [str(out / p) for p in rows["path"]],
        "cover_id": [f"{name}:s{s}:{i}" for s, i in zip(seg, items, strict=True)],
        "file": [f"s{s:05d}_{safe_name(i)}.png" for s, i in zip(seg, items, strict=True)],
    })  # fmt: skip


def _cover_of(covers: pd.DataFrame, users: list[str], items: list[str]) -> pd.DataFrame:
    """One row per (user, item) of the grid with the arm's cover (NaN path where it has none)."""
    grid = pd.DataFrame({"user_id": np.repeat(users, len(items)), "item_id": items * len(users)})
    if covers["user_id"].isna().all():
        return grid.merge(covers.drop(columns="user_id"), on="item_id", how="left")
    return grid.merge(covers, on=["user_id", "item_id"], how="left")


def _take(r: Readout, index: np.ndarray) -> Readout:
    """Rows ``index`` of a readout (every array field, and every head of ``style_probs``)."""
    parts = {f.name: getattr(r, f.name) for f in fields(r)}
    return Readout(**{k: {h: p[index] for h, p in v.items()} if isinstance(v, dict) else v[index]
                      for k, v in parts.items()})  # fmt: skip


def score_covers(truth: Truth, rows: pd.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray]:
    """True attractiveness (CTR at the top position) and read brightness of each row's cover for
    its user and item (evaluation side: reads the truth); each distinct cover is read off once,
    however many pairs show it.

    Args:
        truth: the world's truth.
        rows: user_id, item_id and path (a cover file) per row.
        size: the side the covers are read at (the world's image size).

    Returns:
        attractiveness (N,) and brightness (N,).
    """
    paths, inverse = np.unique(rows["path"].to_numpy(dtype=str), return_inverse=True)
    attract, bright = np.zeros(len(rows)), np.zeros(len(rows))
    for start in range(0, len(paths), READ_CHUNK):
        chunk = paths[start : start + READ_CHUNK]
        r = read(np.stack([np.asarray(load_image(p, size=size)) for p in chunk]))  # (P, ...)
        mine = np.flatnonzero((inverse >= start) & (inverse < start + len(chunk)))
        shown = _take(r, inverse[mine] - start)  # (n, ...) one per row
        ctr = truth.score(None, rows["user_id"].to_numpy()[mine],
                          rows["item_id"].to_numpy()[mine], readout=shown)["ctr"]  # fmt: skip
        attract[mine] = ctr
        bright[mine] = shown.style[:, STYLE_DIMS.index("brightness")]
    return attract, bright


def simulate_ab(
    world: Path | str,
    arms: dict[str, str],
    n_impressions: int,
    seed: int,
    out: Path | str,
    weights: dict[str, float] | None = None,
    chunk_impressions: int = 100_000,
    overwrite: bool = False,
) -> dict:
    """Simulate an A/B experiment of `arms` on `world`'s traffic and write the log to `out`.

    Args:
        world: a CoverWorld folder (with truth/ and world.yaml).
        arms: arm name -> "reference", a generation manifest.parquet or an `icg batch` output
            folder; the first is control.
        n_impressions: impressions to simulate.
        seed: the experiment's seed (also its randomisation salt).
        out: the new platform folder.
        weights: each arm's share of users (default equal).
        chunk_impressions: impressions simulated at once (the output does not depend on it).
        overwrite: replace a non-empty `out`.

    Returns:
        The experiment's summary (also written to OUT/experiment.json).
    """
    world, out = Path(world), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty (pass --overwrite)")
    cfg = load_config(WorldConfig, world / "world.yaml")
    truth = Truth(world)
    names = list(arms)
    covers = {a: arm_covers(world, a, s) for a, s in arms.items()}
    users_all = pd.read_parquet(world / "users.parquet")["user_id"].tolist()
    personal = [c for c in covers.values() if not c["user_id"].isna().all()]
    users = sorted(set.intersection(*(set(c["user_id"]) for c in personal))) if personal else [
        u for u in users_all if not truth.users.loc[u, "cold_start"]]  # fmt: skip
    items = sorted(set.intersection(*(set(c["item_id"]) for c in covers.values())))
    if not users or not items:
        raise ValueError("the arms share no (user, item) pair to experiment on")
    arm_of = assign_arms(users, names, salt=f"world-ab:{seed}",
                         weights=None if weights is None else [weights[a] for a in names])  # fmt: skip
    # the cover each user sees for each item: their arm's
    grids = {a: _cover_of(covers[a], users, items) for a in names}
    # a pair is in the experiment when every arm has a cover for it
    available = np.logical_and.reduce([g["path"].notna().to_numpy() for g in grids.values()])
    ok = available  # (U * I,)
    scores = {a: score_covers(truth, grids[a][ok], cfg.image_size) for a in names}
    # offline: every arm's covers scored by the truth on every pair, whoever saw them
    offline = {a: float(scores[a][0].mean()) for a in names}
    row_arm = arm_of.repeat(len(items))  # (U * I,) the arm each pair's user is in
    shown = pd.concat([grids[a][row_arm == k] for k, a in enumerate(names)]).sort_index()
    shown = shown.fillna({"path": "", "cover_id": "", "file": ""})
    attract, bright = np.zeros(len(shown)), np.zeros(len(shown))
    for k, a in enumerate(names):
        mine = row_arm[ok] == k
        attract[ok & (row_arm == k)] = scores[a][0][mine]
        bright[ok & (row_arm == k)] = scores[a][1][mine]
    available = available.reshape(len(users), len(items))  # (U, I)
    attract, bright = attract.reshape(available.shape), bright.reshape(available.shape)
    popularity = truth.items.loc[items, "popularity"].to_numpy()
    with atomic_dir(out) as tmp:
        shown_arm = np.asarray(names)[row_arm][ok]
        paths = _copy_platform(world, tmp, shown[ok], shown_arm)
        cover_path = np.full(len(shown), "", dtype=object)
        cover_path[ok] = paths
        cover_path = cover_path.reshape(available.shape)
        cover_id = shown["cover_id"].to_numpy(dtype=object).reshape(available.shape)
        n = _write_log(tmp, cfg, seed, n_impressions, chunk_impressions, users, items,
                       np.asarray(names)[arm_of], available, attract, bright, popularity,
                       cover_path, cover_id)  # fmt: skip
        summary = {
            "world": str(world), "arms": arms, "control": names[0], "seed": seed,
            "impressions": n, "users": {a: int((arm_of == k).sum()) for k, a in enumerate(names)},
            "items": len(items), "pairs": int(available.sum()),
            "offline_true_ctr": offline,
            "offline_lift": {a: offline[a] / offline[names[0]] - 1 for a in names[1:]},
            "randomisation": f"sha256('world-ab:{seed}:' + user_id)",
        }  # fmt: skip
        (tmp / "experiment.json").write_text(json.dumps(summary, indent=2))
    logger.info("A/B: %d impressions over %d users x %d items into %s", n, len(users),
                len(items), out)  # fmt: skip
    return summary


def _copy_platform(world: Path, root: Path, shown: pd.DataFrame, arm: np.ndarray) -> list[str]:
    """Copy the world's tables, reference covers and truth into `root`, and each generated cover
    shown into images/ab/<arm>/; return the relative path of every shown cover."""
    for name in ("items.parquet", "users.parquet", "world.yaml"):
        shutil.copy2(world / name, root / name)
    shutil.copytree(world / "images" / "ref", root / "images" / "ref")
    (root / "truth").mkdir()
    for name in ("items.parquet", "users.parquet", "covers.parquet"):
        shutil.copy2(world / "truth" / name, root / "truth" / name)
    rel, copied = [], {}
    for path, cover_id, file, a in zip(shown["path"], shown["cover_id"], shown["file"], arm,
                                       strict=True):  # fmt: skip
        if cover_id.startswith("ref:"):
            rel.append(str(Path(path).relative_to(world)))
            continue
        if (a, file) not in copied:  # a batch cover is shown to every user of its segment
            folder = output_path(root, "images", "ab", safe_name(a))
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, output_path(folder, file))
            copied[a, file] = f"images/ab/{safe_name(a)}/{file}"
        rel.append(copied[a, file])
    return rel


def _write_log(root, cfg, seed, n_impressions, chunk_impressions, users, items, user_arm,
               available, attract, bright, popularity, cover_path, cover_id) -> int:  # fmt: skip
    """Simulate pages block by block and append them to the impression tables."""
    page = min(cfg.page_size, len(items))
    n_pages = -(-n_impressions // page)
    blocks_per_chunk = max(1, chunk_impressions // (page * BLOCK))
    users_a, items_a = np.array(users, dtype=object), np.array(items, dtype=object)
    activity = np.random.default_rng([seed, 0]).lognormal(0.0, 1.0, len(users))
    log_pop = np.log(np.exp(popularity) / np.exp(popularity).sum())
    public = pq.ParquetWriter(root / "impressions.parquet", AB_SCHEMA)
    truth = pq.ParquetWriter(root / "truth" / "impressions.parquet", TRUTH_IMPRESSIONS_SCHEMA)
    written = 0
    n_blocks = -(-n_pages // BLOCK)
    for first in range(0, n_blocks, blocks_per_chunk):
        parts = [_block(cfg, seed, b, min(BLOCK, n_pages - b * BLOCK), page, activity, log_pop,
                        available, attract, bright, popularity)
                 for b in range(first, min(first + blocks_per_chunk, n_blocks))]  # fmt: skip
        u, i, pos, p, clicked, ts = (np.concatenate(x) for x in zip(*parts, strict=True))
        keep = slice(0, min(len(u), n_impressions - written))
        u, i, pos, p, clicked, ts = (x[keep] for x in (u, i, pos, p, clicked, ts))
        events = [f"e{k:08d}" for k in range(written, written + len(u))]
        public.write_table(pa.Table.from_pydict({
            "event_id": events, "user_id": users_a[u], "item_id": items_a[i],
            "cover": cover_path[u, i], "position": pos.astype(np.int64), "clicked": clicked,
            "timestamp": ts, "arm": user_arm[u], "cover_id": cover_id[u, i],
        }, schema=AB_SCHEMA))  # fmt: skip
        exam = examination(pos, cfg.position_decay)
        truth.write_table(pa.Table.from_pydict({
            "event_id": events, "p_click": p, "examination": exam, "attractiveness": attract[u, i],
        }, schema=TRUTH_IMPRESSIONS_SCHEMA))  # fmt: skip
        written += len(u)
    public.close()
    truth.close()
    return written


def _block(cfg, seed, block, n, page, activity, log_pop, available, attract, bright, popularity):
    """`n` pages of block `block` from its own random stream: (user, item, position, p_click,
    clicked, timestamp), each (n * page,) before dropping slots a user has no item for."""
    rng = np.random.default_rng([seed, 1, block])
    user = rng.choice(len(activity), size=n, p=activity / activity.sum())  # (n,)
    g = log_pop[None] + rng.gumbel(size=(n, len(log_pop)))  # (n, I)
    g[~available[user]] = -np.inf
    items = np.argsort(-g, axis=1)[:, :page]  # (n, page)
    real = np.isfinite(np.take_along_axis(g, items, 1))
    u = np.repeat(user, page).reshape(n, page)
    ranker = (popularity[items] + cfg.legacy_brightness_bias * bright[u, items]
              + rng.normal(0, 1.0, items.shape))  # fmt: skip
    ranker[~real] = -np.inf
    order = np.argsort(-ranker, axis=1)
    items, real = np.take_along_axis(items, order, 1), np.take_along_axis(real, order, 1)
    pos = np.broadcast_to(np.arange(page), items.shape)
    p = examination(pos, cfg.position_decay) * attract[u, items]
    clicked = rng.random(p.shape) < p
    ts = 1_767_225_600 + np.repeat(rng.integers(0, 14 * 86400, n), page).reshape(n, page)
    return u[real], items[real], pos[real], p[real], clicked[real], ts[real].astype(np.int64)
