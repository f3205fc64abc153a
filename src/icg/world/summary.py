"""A short, training-safe summary of a platform folder (reads no truth)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def platform_summary(root: Path | str) -> dict[str, float]:
    """Counts and click statistics of the observable platform data."""
    root = Path(root)
    items = pd.read_parquet(root / "items.parquet")
    users = pd.read_parquet(root / "users.parquet")
    imp = pd.read_parquet(root / "impressions.parquet")
    by_pos = imp.groupby("position")["clicked"].mean()
    return {
        "items": len(items),
        "users": len(users),
        "users_with_history": int(imp["user_id"].nunique()),
        "impressions": len(imp),
        "ctr": float(imp["clicked"].mean()) if len(imp) else 0.0,
        "ctr_top_position": float(by_pos.iloc[0]) if len(by_pos) else 0.0,
        "ctr_last_position": float(by_pos.iloc[-1]) if len(by_pos) else 0.0,
        "distinct_titles": int(items["title"].nunique()),
    }
