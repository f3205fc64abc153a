"""Implicit feedback with sampled negatives."""

from __future__ import annotations

import pandas as pd
import pytest

from icg.data import DataError, read_implicit_feedback

ITEMS = [f"i{k}" for k in range(20)]


@pytest.fixture
def feedback(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(
        "user_id,item_id,timestamp\n"
        "u0,i0,10\nu0,i1,11\nu0,i2,12\nu1,i3,13\nu1,i0,14\n"
        "u1,i99,15\n"  # row 5: unknown item
        "u7,i1,16\n"  # row 6: unknown user
        "u1,,17\n"  # row 7: null
    )
    return path


def test_negatives(feedback):
    frame = read_implicit_feedback(
        feedback,
        items=pd.DataFrame({"item_id": ITEMS}),
        users=["u0", "u1"],
        negatives_per_positive=3,
        rejects_dir=feedback.parent / "rejects",
    )
    assert list(frame.columns) == ["user_id", "item_id", "timestamp", "clicked"]
    pos, neg = frame[frame["clicked"]], frame[~frame["clicked"]]
    assert len(pos) == 5 and len(neg) == 15
    assert frame["clicked"].tolist()[:4] == [True, False, False, False]  # positive, its negatives
    seen = pos.groupby("user_id")["item_id"].agg(set).to_dict()
    for user, item in zip(neg["user_id"], neg["item_id"], strict=True):
        assert item in ITEMS and item not in seen[user]
    assert neg["timestamp"].tolist()[:3] == [10, 10, 10]
    report = frame.attrs["report"]
    assert report.rejected == {"null": 1, "unknown_item": 1, "unknown_user": 1}
    rejects = pd.read_parquet(feedback.parent / "rejects" / "feedback.parquet")
    assert rejects["row"].tolist() == [5, 6, 7]


def test_deterministic_and_seeded(feedback):
    kwargs = {"items": ITEMS, "users": None, "negatives_per_positive": 4}
    a = read_implicit_feedback(feedback, seed=1, **kwargs)
    b = read_implicit_feedback(feedback, seed=1, **kwargs)
    c = read_implicit_feedback(feedback, seed=2, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert "u7" in set(a["user_id"])  # users=None accepts any user


def test_dense_user_and_folder_lookup(tmp_path):
    (tmp_path / "interactions.jsonl").write_text(
        "\n".join(f'{{"user_id": "u0", "item_id": "i{k}", "timestamp": {k}}}' for k in range(4))
    )
    frame = read_implicit_feedback(tmp_path, items=[f"i{k}" for k in range(5)], users=None)
    assert set(frame.loc[~frame["clicked"], "item_id"]) == {"i4"}  # the only unseen item
    full = read_implicit_feedback(tmp_path, items=[f"i{k}" for k in range(4)], users=None)
    assert full["clicked"].all()  # nothing left to sample


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no implicit feedback table"):
        read_implicit_feedback(tmp_path, items=ITEMS, users=None)
