"""Impressions and clicks from a position-based model.

P(click) = exam(position) * sigmoid(bias + w_rel*relevance + w_aes*aesthetic
                                     + w_taste*taste_match + popularity + user_bias)

Positions come from the platform's legacy ranker, which pulls popular items and light covers to
the top: a learner that ignores examination mistakes "light" for "liked".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from icg.world.config import WorldConfig


def examination(position: np.ndarray, decay: float) -> np.ndarray:
    """Probability that a slot is looked at (position-based model, Craswell et al. 2008)."""
    return (1.0 + np.asarray(position, dtype=np.float64)) ** -decay


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def attractiveness_logit(
    cfg: WorldConfig,
    relevance: np.ndarray,
    aesthetic: np.ndarray,
    taste: np.ndarray,
    popularity: np.ndarray,
    user_bias: np.ndarray,
) -> np.ndarray:
    """The logit of P(click | examined); all arguments broadcast."""
    return (
        cfg.bias
        + cfg.w_rel * relevance
        + cfg.w_aes * aesthetic
        + cfg.w_taste * taste
        + popularity
        + user_bias
    )


@dataclass
class ImpressionLog:
    """Simulated impressions: arrays of equal length N."""

    user: np.ndarray  # (N,) user index
    item: np.ndarray  # (N,) item index
    variant: np.ndarray  # (N,) variant index of the shown cover
    position: np.ndarray  # (N,)
    p_click: np.ndarray  # (N,) the true click probability (truth only)
    clicked: np.ndarray  # (N,) bool
    timestamp: np.ndarray  # (N,) int64 seconds


# Cells (pages x items) of Gumbel noise drawn at once: bounds the memory of one chunk.
CHUNK_CELLS = 1 << 22


def _pages_per_chunk(n_items: int, page: int, chunk_impressions: int | None) -> int:
    if chunk_impressions is not None:
        if chunk_impressions < 1:
            raise ValueError(f"chunk_impressions: expected >= 1, got {chunk_impressions}")
        return max(1, -(-chunk_impressions // page))
    return max(1, CHUNK_CELLS // max(n_items, 1))


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _skip_doubles(state: dict, n: int, size: int) -> dict:
    """The bit generator state after `n` rejection-free double draws from `state`.

    Gumbel draws take one double each unless the double is exactly 0 (numpy redraws then), so
    a dry run of uniform doubles finds where they end; on a zero (p = 2**-53 per draw) the dry
    run replays the Gumbel draws themselves.
    """
    gen = _generator(state)
    zero = False
    for s in _chunks(n, size):
        zero |= bool((gen.random(s.stop - s.start) == 0.0).any())
    if zero:
        gen = _generator(state)
        for s in _chunks(n, size):
            gen.gumbel(size=s.stop - s.start)
    return gen.bit_generator.state


def _generator(state: dict) -> np.random.Generator:
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)


def simulate_chunks(
    cfg: WorldConfig,
    rng: np.random.Generator,
    active_users: np.ndarray,
    popularity: np.ndarray,
    cover_brightness: np.ndarray,
    logit_fn,
    chunk_impressions: int | None = None,
) -> Iterator[ImpressionLog]:
    """Simulate pages of `page_size` impressions until `n_impressions` are shown, in chunks.

    The platform draws, in order: user activity, one user per page, Gumbel noise for every
    (page, item) (items per page: Gumbel top-k on popularity, without replacement), one variant
    per slot, the ranker's noise, one uniform per impression for its click, and page times.
    Each stream is replayed chunk by chunk from where it starts in `rng`, so memory follows
    the pages of one chunk (times the items) and the output is the same whatever the chunk
    size: the impressions of one long draw, bit for bit. On return `rng` is where that long
    draw leaves it.

    Args:
        active_users: indices of users with history.
        popularity: (I,) item popularity logits.
        cover_brightness: (I, V) brightness read off each variant (the legacy ranker sees it).
        logit_fn: (user (N,), item (N,), variant (N,)) -> attractiveness logits (N,).
        chunk_impressions: impressions per chunk (rounded up to whole pages); default: as many
            pages as keep the chunk's Gumbel noise under `CHUNK_CELLS` cells.
    """
    n_items, n_var = cover_brightness.shape
    page = min(cfg.page_size, n_items)
    n_pages = -(-cfg.n_impressions // page)
    chunk = _pages_per_chunk(n_items, page, chunk_impressions)
    activity = rng.lognormal(0.0, 1.0, len(active_users))
    users = rng.choice(active_users, size=n_pages, p=activity / activity.sum())
    log_p = np.log(np.exp(popularity) / np.exp(popularity).sum())[None]  # (1, I)
    # where each stream starts: dry runs of the streams that come before it
    g_state = rng.bit_generator.state
    v_state = _skip_doubles(g_state, n_pages * n_items, chunk * n_items)
    gen = _generator(v_state)
    for s in _chunks(n_pages, chunk):
        gen.integers(n_var, size=(s.stop - s.start, page))
    n_state = gen.bit_generator.state
    for s in _chunks(n_pages, chunk):
        gen.normal(0, 1.0, (s.stop - s.start, page))
    r_state = gen.bit_generator.state
    t_state = _skip_doubles(r_state, n_pages * page, chunk * page)
    gen = _generator(t_state)
    ts_pages = 1_767_225_600 + np.sort(gen.integers(0, 90 * 86400, n_pages))  # from 2026-01-01
    end_state = gen.bit_generator.state

    g_gen, v_gen, n_gen, r_gen = map(_generator, (g_state, v_state, n_state, r_state))
    for s in _chunks(n_pages, chunk):
        n = s.stop - s.start
        g = log_p + g_gen.gumbel(size=(n, n_items))  # (n, I)
        items = np.argpartition(-g, page - 1, axis=1)[:, :page]  # (n, page)
        del g
        variants = v_gen.integers(n_var, size=(n, page))
        ranker = (
            popularity[items]
            + cfg.legacy_brightness_bias * cover_brightness[items, variants]
            + n_gen.normal(0, 1.0, items.shape)
        )
        order = np.argsort(-ranker, axis=1)
        item = np.take_along_axis(items, order, 1).ravel()
        variant = np.take_along_axis(variants, order, 1).ravel()
        position = np.broadcast_to(np.arange(page), items.shape).ravel()
        user = np.repeat(users[s], page)
        p = examination(position, cfg.position_decay) * sigmoid(logit_fn(user, item, variant))
        clicked = r_gen.random(len(p)) < p
        ts = np.repeat(ts_pages[s], page)
        keep = slice(0, max(0, min(len(p), cfg.n_impressions - s.start * page)))
        yield ImpressionLog(
            user[keep], item[keep], variant[keep], position[keep], p[keep], clicked[keep], ts[keep]
        )
    if g_gen.bit_generator.state != v_state or r_gen.bit_generator.state != t_state:
        raise RuntimeError("simulate_chunks: a replayed stream did not end where it should")
    rng.bit_generator.state = end_state


def simulate(
    cfg: WorldConfig,
    rng: np.random.Generator,
    active_users: np.ndarray,
    popularity: np.ndarray,
    cover_brightness: np.ndarray,
    logit_fn,
) -> ImpressionLog:
    """All of `simulate_chunks` in one `ImpressionLog` (small worlds and tests)."""
    parts = list(simulate_chunks(cfg, rng, active_users, popularity, cover_brightness, logit_fn))
    return concat_logs(parts)


def concat_logs(parts: list[ImpressionLog]) -> ImpressionLog:
    """One log of the chunks' impressions, in order (an empty log for no chunks)."""
    fields = list(ImpressionLog.__dataclass_fields__)
    if not parts:
        return ImpressionLog(
            *(np.zeros(0, dtype=bool if f == "clicked" else np.int64) for f in fields)
        )
    return ImpressionLog(*(np.concatenate([getattr(c, f) for c in parts]) for f in fields))
