"""Batched, seeded cover generation with a manifest and an AI-generated marker in every PNG.

    manifest = generate_covers(pipe, data, pairs, out)   # OUT/*.png + OUT/manifest.parquet
    manifest = generate_for_run("RUN/icg", "DATA", out)  # `icg generate`: checks, loads, draws

Per-user generation serves small catalogs; `segments=S` clusters user embeddings and generates
one cover per (segment, item), the way to serve millions of users, then picks per user.
`candidates=K` is best-of-K sampling: K draws per pair (own seeds), and the scorer (e.g. the
reward a stage-B run optimised, `icg.rewards.factory.load_run_reward`) keeps the best one, as
best-of-n sampling against a reward model (Nakano et al. 2021, WebGPT; Gao et al. 2023,
"Scaling Laws for Reward Model Overoptimization").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from rich.progress import Progress

from icg.config import DEFAULT_GUIDANCE, DEFAULT_STEPS
from icg.data import load_dataset
from icg.data.rejects import save_rejects
from icg.io import atomic_path, file_lock, undo_on_disk_full
from icg.layout import MANIFEST_FILE, MANIFEST_LOCK_FILE, REJECTS_DIR
from icg.marking import DIGITAL_SOURCE_TYPE as DIGITAL_SOURCE_TYPE  # re-exported
from icg.marking import XMP_TEMPLATE as XMP_TEMPLATE  # re-exported
from icg.marking import is_marked_generated as is_marked_generated  # re-exported
from icg.marking import save_generated_png
from icg.models.paths import resolve_adapter_dir
from icg.pairs import check_pairs, choose_pairs, read_pairs
from icg.pipeline import ICGPipeline
from icg.rewards import PreferenceReward
from icg.rewards.factory import load_run_reward
from icg.safety import check_name, file_stems, output_path, prepare_output, safe_name
from icg.segments import segment

logger = logging.getLogger(__name__)


MANIFEST_COLUMNS = ["user_id", "item_id", "method", "path", "seed", "segment", "candidate", "score"]
# A scorer rates covers for (user, item) pairs: (user_ids, item_ids, images uint8 (N,H,W,3)) -> (N,)
Scorer = Callable[[Sequence[str], Sequence[str], np.ndarray], np.ndarray]


def pair_seed(seed: int, user_id: str, item_id: str, candidate: int = 0) -> int:
    """A per-pair noise seed independent of batching: blake2b(seed, user, item[, candidate])
    mod 2^31 (candidate 0 is the pair's first draw)."""
    key = f"{seed}|{user_id}|{item_id}" + (f"|{candidate}" if candidate else "")
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31)


def draw_covers(
    pipe,
    titles,
    images,
    item_ids,
    user_emb,
    seeds,
    steps,
    guidance,
    strength=1.0,
    user_guidance=1.0,
) -> list[Image.Image]:
    """One pipeline call: cover b from noise seed ``seeds[b]`` (its own generator, so a cover
    does not depend on the batch it is drawn in), user embeddings ``(B, E)`` or ``None``."""
    generators = [torch.Generator(device=pipe.denoiser.device).manual_seed(s) for s in seeds]
    extra = {"strength": strength} if strength < 1.0 else {}
    return pipe(
        titles,
        images,
        user_embeddings=user_emb,
        item_keys=item_ids,
        generator=generators,
        num_inference_steps=steps,
        guidance_scale=guidance,
        user_guidance=user_guidance,
        **extra,
    ).images


def generate_covers(
    pipe,
    data,
    pairs: pd.DataFrame,
    out: Path | str,
    *,
    method: str = "icg",
    seed: int = 0,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 16,
    segments: int | None = None,
    scorer: Scorer | None = None,
    personalize: bool = True,
    strength: float = 1.0,
    candidates: int = 1,
    share: bool = True,
    user_guidance: float = 1.0,
    embedding_users: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Generate a cover per (user_id, item_id) pair and write OUT/manifest.parquet.

    Args:
        pipe: an `ICGPipeline`.
        data: a `PlatformData` (items with titles and reference images, users with embeddings).
        pairs: a frame with user_id and item_id columns.
        out: output folder (PNGs under OUT/<method>/).
        method: name recorded in the manifest.
        seed: base seed; draw k of a pair has the noise seed `pair_seed(seed, user, item, k)`.
        segments: if set, generate per (segment, item) and pick per user (see module doc).
        scorer: rates covers for users (user id ``""``: no user), e.g. the reward a stage-B run
            optimised (`load_run_reward`). It picks among the candidates of a pair and, with
            segments, among every segment's covers of the item; without it each user gets
            their own segment's cover.
        personalize: False generates with no user (cold-start path): one cover per item.
        share: with ``personalize=False``, False draws per pair instead, with the pair's own
            seeds: the same noise as the personalized draws (common random numbers), so an
            evaluation compares with and without the user on paired samples.
        strength: below 1, start from the item's reference cover (see `ICGPipeline`).
        candidates: best-of-K sampling: draw K covers per pair (per item without users, per
            segment and item with segments) and keep the one the scorer rates best.
        user_guidance: ``w_u`` of `ICGPipeline` (1: the plain personalized draw, 0: the draw
            without the user bit for bit, above 1: further towards the user).
        embedding_users: pair user -> the user whose embedding draws that user's covers (a
            user-swap control: the noise seed, file name and manifest row stay the pair user's,
            so only the user embedding differs). Per-user generation only.
    """
    if candidates < 1:
        raise ValueError(f"candidates: expected >= 1, got {candidates}")
    if candidates > 1 and scorer is None:
        raise ValueError("candidates > 1 needs a scorer to pick the best draw with")
    out = Path(out)
    check_name(method, "method")  # a path component: never a separator or ".."
    items = data.items.set_index("item_id")
    users = data.users.set_index("user_id")
    missing = set(pairs["item_id"]) - set(items.index)
    if missing:
        raise KeyError(f"pairs: unknown item_id {sorted(missing)[:3]}")
    unknown_users = set(pairs["user_id"]) - set(users.index)
    if personalize and unknown_users:
        raise KeyError(f"pairs: unknown user_id {sorted(unknown_users)[:3]}")
    swap = dict(embedding_users or {})
    if swap and (segments or not personalize):
        raise ValueError("embedding_users: only with per-user generation (no segments, a user)")
    if set(swap.values()) - set(users.index):
        raise KeyError(
            f"embedding_users: unknown user_id {sorted(set(swap.values()) - set(users.index))[:3]}"
        )

    # jobs: (key user, item) -> embedding or None; each job draws `candidates` images
    if not personalize and share:
        jobs = {("", i): None for i in dict.fromkeys(pairs["item_id"])}
    elif not personalize:
        jobs = {(u, i): None for u, i in zip(pairs["user_id"], pairs["item_id"], strict=True)}
    elif segments:
        groups = segment(data.users, "kmeans", segments, seed)
        seg_of = dict(zip(groups.users["user_id"], groups.users["segment"], strict=True))
        keys = list(groups.table["key"])
        jobs = {
            (key, i): centroid
            for key, centroid in zip(keys, groups.embeddings(), strict=True)
            for i in dict.fromkeys(pairs["item_id"])
        }
    else:
        jobs = {
            (u, i): np.asarray(users.at[swap.get(u, u), "embedding"])
            for u, i in zip(pairs["user_id"], pairs["item_id"], strict=True)
        }
    draws = [(u, i, k) for u, i in jobs for k in range(candidates)]
    # ids become file names only through safe names; the manifest maps ids to paths
    stems = file_stems((u or "nouser", i, f"c{k}" if candidates > 1 else "") for u, i, k in draws)
    paths: dict[tuple[str, str, int], Path] = {}
    with Progress() as progress:
        task = progress.add_task(f"generating {method}", total=len(draws))
        for start in range(0, len(draws), batch_size):
            chunk = draws[start : start + batch_size]
            embs = [jobs[(u, i)] for u, i, _ in chunk]
            user_emb = (
                None if embs[0] is None else torch.as_tensor(np.stack(embs), dtype=torch.float32)
            )
            seeds = [pair_seed(seed, u, i, k) for u, i, k in chunk]
            images = draw_covers(
                pipe,
                [items.at[i, "title"] for _, i, _ in chunk],
                [items.at[i, "image"] for _, i, _ in chunk],
                [i for _, i, _ in chunk],
                user_emb,
                seeds,
                num_inference_steps,
                guidance_scale,
                strength,
                user_guidance,
            )
            for (u, i, k), image, s in zip(chunk, images, seeds, strict=True):
                stem = stems[(u or "nouser", i, f"c{k}" if candidates > 1 else "")]
                path = output_path(out, method, f"{stem}.png")  # refuses symlinks, escapes
                save_generated_png(image, path, method=method, seed=str(s), item_id=safe_name(i))
                paths[(u, i, k)] = path
            progress.advance(task, len(chunk))

    # the draws each (user, item) chooses from: its job's candidates, or every segment's
    def options(u: str, i: str) -> list[tuple[str, str, int]]:
        if not personalize:
            return [("" if share else u, i, k) for k in range(candidates)]
        if segments and scorer is None:
            return [(keys[seg_of[str(u)]], i, 0)]
        if segments:
            return [(key, i, k) for key in keys for k in range(candidates)]
        return [(u, i, k) for k in range(candidates)]

    wanted = list(zip(pairs["user_id"], pairs["item_id"], strict=True))
    picks = _pick([(u if personalize else "", options(u, i)) for u, i in wanted], paths, scorer)
    segment_of = {key: s for s, key in enumerate(keys)} if segments else {}
    rows = []
    for (u, i), (draw, score) in zip(wanted, picks, strict=True):
        rows.append(
            {
                "user_id": u,
                "item_id": i,
                "method": method,
                "path": str(paths[draw]),
                "seed": pair_seed(seed, *draw),
                "segment": segment_of.get(draw[0], -1),
                "candidate": draw[2],
                "score": score,
            }
        )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    write_manifest(manifest, output_path(out, MANIFEST_FILE))
    return manifest


def _pick(requests, paths, scorer: Scorer | None) -> list[tuple[tuple, float]]:
    """Per ``(scoring user, options)`` request, the option the scorer rates best for that user
    (``""``: no user) and its score; without a scorer (one option each) the option and NaN.
    An option shared by requests of the same user is scored once."""
    if scorer is None:
        return [(opts[0], float("nan")) for _, opts in requests]
    needed = list(dict.fromkeys((u, o) for u, opts in requests for o in opts))
    scores: dict[tuple, float] = {}
    for start in range(0, len(needed), 256):
        chunk = needed[start : start + 256]
        images = np.stack([np.asarray(Image.open(paths[o]).convert("RGB")) for _, o in chunk])
        values = scorer([u for u, _ in chunk], [o[1] for _, o in chunk], images)
        scores.update({key: float(v) for key, v in zip(chunk, values, strict=True)})
    picks = []
    for u, opts in requests:
        rated = [scores[(u, o)] for o in opts]
        best = int(np.nanargmax(rated))
        picks.append((opts[best], rated[best]))
    return picks


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    """Atomic write of a manifest merged with an existing one, under a lock (no row lost)."""
    with file_lock(output_path(path.parent, MANIFEST_LOCK_FILE)):
        if path.exists():
            old = pd.read_parquet(path)
            keep = ~old.set_index(["user_id", "item_id", "method"]).index.isin(
                manifest.set_index(["user_id", "item_id", "method"]).index
            )
            manifest = pd.concat([old[keep], manifest], ignore_index=True)
        with atomic_path(path) as tmp:
            manifest.to_parquet(tmp, index=False)


def reward_scorer(reward, data, output: str | None = None) -> Scorer:
    """A `Scorer` from a `Reward` or `MultiReward`: ``(user_ids, item_ids, images uint8) -> (N,)``
    (user id ``""`` or unknown: no user). ``output`` takes that entry of the reward's info
    instead of its value (e.g. ``"preference_probability"``)."""
    titles = data.items.set_index("item_id")["title"]
    users = data.users.set_index("user_id")["embedding"]
    dim = len(users.iloc[0])

    def vector(user_id: str) -> np.ndarray:
        if user_id in users.index:
            return np.asarray(users.at[user_id], dtype=np.float32)
        return np.full(dim, np.nan, dtype=np.float32)

    @torch.no_grad()
    def score(user_ids: Sequence[str], item_ids: Sequence[str], images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(user_ids), 128):
            u, i = list(user_ids[start : start + 128]), list(item_ids[start : start + 128])
            x = torch.from_numpy(images[start : start + 128]).permute(0, 3, 1, 2).float() / 255.0
            emb = torch.from_numpy(np.stack([vector(v) for v in u]))  # (B, E); NaN: no user
            values, info = reward(
                x,
                titles.loc[i].tolist(),
                emb,
                user_ids=[v if v in users.index else None for v in u],
            )
            out.append((values if output is None else info[output]).float().numpy())
        return np.concatenate(out)

    return score


def generation_scorer(
    run: Path | str,
    data,
    *,
    preference: Path | str | None = None,
    candidates: int = 1,
) -> Scorer | None:
    """What `icg generate` picks among draws with (candidates, or segments' covers).

    A preference model, when given, scores every pick. Otherwise best-of-K (``candidates > 1``)
    scores with the reward the stage-B run optimised (`load_run_reward`), so generation keeps
    the draws its training aimed at. One draw per pair needs no scorer.

    Args:
        run: the stage-B run folder (``RUN/icg``) that holds ``config.yaml`` and the reward
            statistics next to its adapter.
        data: the `PlatformData` (titles and user embeddings the scorer reads).
        preference: a trained preference model folder (``RUN/preference``), or ``None``.
        candidates: draws per pair.

    Raises:
        FileNotFoundError: ``candidates > 1`` without a preference model and ``run`` is not a
            finished stage-B run folder.
    """
    if preference is not None:
        return reward_scorer(PreferenceReward(str(preference)), data)
    if candidates > 1:
        return reward_scorer(load_run_reward(run), data)
    return None


def generate_for_run(
    adapter: Path | str,
    data: Path | str,
    out: Path | str,
    *,
    pairs: Path | str | pd.DataFrame | None = None,
    n_users: int = 4,
    n_items: int = 4,
    preference: Path | str | None = None,
    candidates: int = 1,
    method: str = "icg",
    seed: int = 0,
    overwrite: bool = False,
    **options,
) -> pd.DataFrame:
    """`icg generate`: covers of a trained run for (user, item) pairs, into a fresh ``out``.

    Everything named is checked before anything is loaded or written: the method name, the
    pairs (a parquet file, a frame, or ``n_users`` x ``n_items`` chosen by `choose_pairs`)
    against the data, and the output folder (`icg.safety.prepare_output`). Rows the data loader
    refuses go to ``out/rejects``. Then the scorer (`generation_scorer`) and the pipeline of
    ``adapter`` are loaded and `generate_covers` draws.

    Args:
        adapter: the ICG run (``RUN/icg``) or its adapter folder.
        data: the platform data folder (items, users).
        out: the output folder: PNGs under ``out/<method>/`` and ``out/manifest.parquet``.
        pairs: the pairs to draw, or ``None`` to choose them.
        n_users, n_items: the pairs chosen without ``pairs``.
        preference: a preference model that picks among segments' covers / candidates.
        candidates: best-of-K draws per pair (scored by the run's reward or ``preference``).
        method: the name recorded in the manifest.
        seed: base seed (pair choice and every draw's noise).
        overwrite: replace the contents of a non-empty ``out``.
        **options: `generate_covers` options (``num_inference_steps``, ``guidance_scale``,
            ``segments``, ``strength``, ``user_guidance``, ``batch_size``).

    Raises:
        ValueError: a bad name, pairs that do not match the data, an output folder in use, or
            ``candidates > 1`` without a preference model and ``adapter`` is no stage-B run.
    """
    out = Path(out)
    check_name(method, "method")
    frame = read_pairs(pairs) if isinstance(pairs, str | Path) else pairs
    dataset = load_dataset(data)
    if frame is None:
        frame = choose_pairs(dataset, n_users=n_users, n_items=n_items, seed=seed)
    check_pairs(frame, dataset)
    prepare_output(
        out, kind="generate", overwrite=overwrite, inputs=[data], replace=[MANIFEST_FILE]
    )
    save_rejects(dataset, out / REJECTS_DIR)
    try:
        scorer = generation_scorer(adapter, dataset, preference=preference, candidates=candidates)
    except FileNotFoundError as err:
        raise ValueError(f"candidates > 1 needs the stage-B run folder (RUN/icg): {err}") from err
    pipe = ICGPipeline.from_pretrained(resolve_adapter_dir(adapter))
    with undo_on_disk_full(out, "icg generate"):  # no cover left without its manifest
        return generate_covers(
            pipe, dataset, frame, out, method=method, seed=seed, scorer=scorer,
            candidates=candidates, **options,
        )  # fmt: skip
