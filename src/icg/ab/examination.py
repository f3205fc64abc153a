"""The examination curve of a click log, estimated from the log itself.

A position-based model (PBM): P(click) = exam(position) * attract(cover), fitted by EM over the
log's impressions (Chuklin, Markov & de Rijke 2015, "Click Models for Web Search", Sec. 4.1 and
the EM updates of Sec. 4.3). The same cover shown at several positions (the ranker's noise)
identifies the curve; it is scaled so the top position is examined with probability 1. This is
the curve `icg train preference` fits (`PreferenceModel.log_examination`), without images.
"""

from __future__ import annotations

import numpy as np


def fit_pbm(
    position: np.ndarray, doc: np.ndarray, clicked: np.ndarray, iterations: int = 100
) -> np.ndarray:
    """EM estimate of exam(k) for k = 0..max(position), scaled to exam(0) = 1.

    Args:
        position: (N,) non-negative int positions.
        doc: (N,) int id of what was shown (e.g. arm x cover), its attractiveness a parameter.
        clicked: (N,) bool clicks.
        iterations: EM steps.
    """
    position = np.asarray(position, dtype=np.int64)
    doc = np.asarray(doc, dtype=np.int64)
    c = np.asarray(clicked, dtype=np.float64)
    n_pos, n_doc = int(position.max()) + 1, int(doc.max()) + 1
    pos_n = np.maximum(np.bincount(position, minlength=n_pos), 1)
    doc_n = np.maximum(np.bincount(doc, minlength=n_doc), 1)
    theta = np.full(n_pos, 0.5)
    alpha = np.full(n_doc, 0.2)
    for _ in range(iterations):
        t, a = theta[position], alpha[doc]
        miss = np.maximum(1.0 - t * a, 1e-12)
        e_exam = c + (1 - c) * t * (1 - a) / miss  # P(examined | click outcome)
        e_attr = c + (1 - c) * (1 - t) * a / miss  # P(attracted | click outcome)
        theta = np.clip(np.bincount(position, e_exam, n_pos) / pos_n, 1e-6, 1.0)
        alpha = np.clip(np.bincount(doc, e_attr, n_doc) / doc_n, 1e-6, 1.0)
    return theta / theta[0]
