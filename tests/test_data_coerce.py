"""Column parsers: embeddings from strings, ints, bools, timestamps."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from icg.data.coerce import parse_bool, parse_embedding, parse_int, parse_timestamp

floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(st.lists(floats, min_size=1, max_size=8), st.sampled_from(["[{}]", "{}", "({})"]))
def test_embedding_strings_round_trip(values, template):
    sep = ", " if template != "{}" else " "
    text = template.format(sep.join(repr(v) for v in values))
    parsed, wrong, nonfinite = parse_embedding(pd.Series([text, values], dtype=object))
    assert not wrong.any() and not nonfinite.any()
    np.testing.assert_array_equal(parsed[0], np.asarray(values, dtype=np.float32))
    np.testing.assert_array_equal(parsed[1], parsed[0])


def test_embedding_bad_values():
    series = pd.Series(["[1, x]", 3.0, [[1, 2]], ["a"], "[1e40, 0]", [np.nan]], dtype=object)
    _, wrong, nonfinite = parse_embedding(series)
    assert wrong.tolist() == [True, True, True, True, False, False]
    assert nonfinite.tolist() == [False, False, False, False, True, True]  # 1e40 overflows f32


def test_scalars():
    ints, bad = parse_int(pd.Series(["3", 4, 5.0, "6.0", True, "x", 1.5], dtype=object))
    assert bad.tolist() == [False] * 4 + [True] * 3 and ints.tolist()[:4] == [3, 4, 5, 6]
    bools, bad = parse_bool(pd.Series(["TRUE", "no", 1, 0.0, np.True_, "maybe", 2], dtype=object))
    assert bools.tolist()[:5] == [True, False, True, False, True] and bad.tolist()[5:] == [True] * 2
    stamps, bad = parse_timestamp(
        pd.Series(["1700000000", 1.5, "1970-01-01T00:01:00+00:00", "now", False], dtype=object)
    )
    assert stamps.tolist()[:3] == [1700000000, 1, 60] and bad.tolist() == [False] * 3 + [True] * 2
