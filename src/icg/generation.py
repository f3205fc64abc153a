"""Batched, seeded cover generation with a manifest and an AI-generated marker in every PNG.

    manifest = generate_covers(pipe, data, pairs, out)   # OUT/*.png + OUT/manifest.parquet

Per-user generation serves small catalogs; `segments=S` clusters user embeddings and generates
one cover per (segment, item), the way to serve millions of users, then picks per user.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, PngImagePlugin
from rich.progress import Progress

logger = logging.getLogger(__name__)

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP_TEMPLATE = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" '
    'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
    "<Iptc4xmpExt:DigitalSourceType>{source}</Iptc4xmpExt:DigitalSourceType>"
    "</rdf:Description></rdf:RDF></x:xmpmeta>"
    '<?xpacket end="w"?>'
)
MANIFEST_COLUMNS = ["user_id", "item_id", "method", "path", "seed", "segment"]
# A scorer rates covers for (user, item) pairs: (user_ids, item_ids, images uint8 (N,H,W,3)) -> (N,)
Scorer = Callable[[Sequence[str], Sequence[str], np.ndarray], np.ndarray]


def save_generated_png(image: Image.Image, path: Path, **text: str) -> None:
    """Write a PNG atomically with the IPTC `trainedAlgorithmicMedia` marker as XMP (iTXt)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP_TEMPLATE.format(source=DIGITAL_SOURCE_TYPE))
    for key, value in text.items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png")
    os.close(fd)
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def is_marked_generated(path: Path | str) -> bool:
    """Whether a PNG carries the AI-generated marker."""
    with Image.open(path) as im:
        return DIGITAL_SOURCE_TYPE in str(im.info.get("XML:com.adobe.xmp", ""))


def pair_seed(seed: int, user_id: str, item_id: str) -> int:
    """A per-pair noise seed independent of batching: blake2b(seed, user, item) mod 2^31."""
    digest = hashlib.blake2b(f"{seed}|{user_id}|{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31)


def segment_users(
    embeddings: np.ndarray, n_segments: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """k-means over user embeddings (U, E): labels (U,) and centroids (S, E)."""
    from sklearn.cluster import KMeans

    n_segments = min(n_segments, len(embeddings))
    km = KMeans(n_clusters=n_segments, n_init=4, random_state=seed).fit(embeddings)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


def _generate(
    pipe, titles, images, item_ids, user_emb, seeds, steps, guidance, strength=1.0
) -> list[Image.Image]:
    generators = [torch.Generator(device=pipe.base.unet.device).manual_seed(s) for s in seeds]
    extra = {"strength": strength} if strength < 1.0 else {}
    return pipe(
        titles,
        images,
        user_embeddings=user_emb,
        item_keys=item_ids,
        generator=generators,
        num_inference_steps=steps,
        guidance_scale=guidance,
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
    num_inference_steps: int = 25,
    guidance_scale: float = 5.0,
    batch_size: int = 16,
    segments: int | None = None,
    scorer: Scorer | None = None,
    personalize: bool = True,
    strength: float = 1.0,
) -> pd.DataFrame:
    """Generate a cover per (user_id, item_id) pair and write OUT/manifest.parquet.

    Args:
        pipe: an `ICGPipeline`.
        data: a `PlatformData` (items with titles and reference images, users with embeddings).
        pairs: a frame with user_id and item_id columns.
        out: output folder (PNGs under OUT/<method>/).
        method: name recorded in the manifest.
        seed: base seed; each pair's noise seed is `pair_seed(seed, user, item)`.
        segments: if set, generate per (segment, item) and pick per user (see module doc).
        scorer: picks among segment covers per user (e.g. the preference model); without it
            each user gets their own segment's cover.
        personalize: False generates one cover per item with no user (cold-start path).
        strength: below 1, start from the item's reference cover (see `ICGPipeline`).
    """
    out = Path(out)
    items = data.items.set_index("item_id")
    users = data.users.set_index("user_id")
    missing = set(pairs["item_id"]) - set(items.index)
    if missing:
        raise KeyError(f"pairs: unknown item_id {sorted(missing)[:3]}")
    unknown_users = set(pairs["user_id"]) - set(users.index)
    if personalize and unknown_users:
        raise KeyError(f"pairs: unknown user_id {sorted(unknown_users)[:3]}")

    # jobs: (key user, item, embedding or None, seed) -> one image each
    if not personalize:
        jobs = {("", i): None for i in dict.fromkeys(pairs["item_id"])}
    elif segments:
        emb = np.stack(users["embedding"].to_numpy())
        labels, centroids = segment_users(emb, segments, seed)
        seg_of = dict(zip(users.index, labels, strict=True))
        jobs = {
            (f"segment-{s}", i): centroids[s]
            for s in range(len(centroids))
            for i in dict.fromkeys(pairs["item_id"])
        }
    else:
        jobs = {
            (u, i): np.asarray(users.at[u, "embedding"])
            for u, i in zip(pairs["user_id"], pairs["item_id"], strict=True)
        }
    keys = list(jobs)
    paths: dict[tuple[str, str], Path] = {}
    with Progress() as progress:
        task = progress.add_task(f"generating {method}", total=len(keys))
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            titles = [items.at[i, "title"] for _, i in chunk]
            refs = [items.at[i, "image"] for _, i in chunk]
            embs = [jobs[k] for k in chunk]
            user_emb = (
                None if embs[0] is None else torch.as_tensor(np.stack(embs), dtype=torch.float32)
            )
            seeds = [pair_seed(seed, u, i) for u, i in chunk]
            images = _generate(
                pipe,
                titles,
                refs,
                [i for _, i in chunk],
                user_emb,
                seeds,
                num_inference_steps,
                guidance_scale,
                strength,
            )
            for (u, i), image, s in zip(chunk, images, seeds, strict=True):
                path = out / method / f"{u or 'nouser'}_{i}.png"
                save_generated_png(image, path, method=method, seed=str(s), item_id=i)
                paths[(u, i)] = path
            progress.advance(task, len(chunk))

    rows = []
    for u, i in zip(pairs["user_id"], pairs["item_id"], strict=True):
        if not personalize:
            key, segment = ("", i), -1
        elif segments:
            segment = int(seg_of[u])
            key = (f"segment-{segment}", i)
        else:
            key, segment = (u, i), -1
        rows.append(
            {
                "user_id": u,
                "item_id": i,
                "method": method,
                "path": str(paths[key]),
                "seed": pair_seed(seed, *key),
                "segment": segment,
            }
        )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if segments and scorer is not None:
        manifest = _pick_segment_covers(manifest, paths, len(centroids), scorer, seed)
    write_manifest(manifest, out / "manifest.parquet")
    return manifest


def _pick_segment_covers(manifest, paths, n_segments, scorer: Scorer, seed: int) -> pd.DataFrame:
    """Per (user, item), the segment cover the scorer likes best."""
    picked = manifest.copy()
    for row in picked.itertuples():
        cands = [(f"segment-{s}", row.item_id) for s in range(n_segments)]
        images = np.stack([np.asarray(Image.open(paths[c]).convert("RGB")) for c in cands])
        scores = scorer([row.user_id] * len(cands), [row.item_id] * len(cands), images)
        best = int(np.argmax(scores))
        picked.at[row.Index, "path"] = str(paths[cands[best]])
        picked.at[row.Index, "segment"] = best
        picked.at[row.Index, "seed"] = pair_seed(seed, *cands[best])
    return picked


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    """Append-safe atomic parquet write of a manifest (merging with an existing one)."""
    if path.exists():
        old = pd.read_parquet(path)
        keep = ~old.set_index(["user_id", "item_id", "method"]).index.isin(
            manifest.set_index(["user_id", "item_id", "method"]).index
        )
        manifest = pd.concat([old[keep], manifest], ignore_index=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".parquet")
    os.close(fd)
    manifest.to_parquet(tmp, index=False)
    os.replace(tmp, path)
