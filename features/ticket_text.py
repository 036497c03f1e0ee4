"""The first message's text as features: length, exclamation marks, and :class:`TextScorer`, a score learned from
the platform's own tickets (hashed n-grams weighted by what escalated) rather than a fixed English keyword list."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

Arr = np.ndarray
_NAN = float("nan")

# Text: length, exclamation marks and a score learned from the platform's own tickets (:class:`TextScorer`): hashed
# word uni/bigrams and in-word character 3-5-grams, weighted by a logistic regression of escalation, so the wording
# that escalates on this platform (its language, its customers' phrases) counts, not a fixed English word list.
TEXT_HASH_BITS = 18
_TOKEN = re.compile(r"[a-z0-9']+")


# --------------------------------------------------------------------------------------------------------------------
# Text


def text_features(text: str | None) -> list[float]:
    """Length, exclamation marks, and NaN for the learned text score (the fitted model fills it from the text)."""
    if not text or not isinstance(text, str):
        return [0.0, 0.0, _NAN]
    return [float(len(text)), float(text.count("!")), _NAN]


def text_matrix(texts: pd.Series | Sequence[str | None]) -> Arr:
    """:func:`text_features` for many messages (each distinct text is processed once)."""
    s = pd.Series(texts, dtype="object")
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    table = np.array([text_features(t) for t in uniques] + [text_features(None)], dtype=np.float64)
    return table[np.where(codes < 0, len(uniques), codes)]


def text_grams(text: str | None) -> list[int]:
    """The distinct hashed n-grams of a message: word uni- and bigrams, and character 4-grams inside each word
    (so inflections and misspellings of a word share most of their grams). crc32, stable across processes."""
    if not text or not isinstance(text, str):
        return []
    words = _TOKEN.findall(text.lower())
    grams = {f"w {w}" for w in words} | {f"b {a} {b}" for a, b in zip(words, words[1:], strict=False)}
    for w in words:
        padded = f"<{w}>"
        grams.update(f"c {padded[i:i + 4]}" for i in range(len(padded) - 3))
    if "!" in text:
        grams.add("p !")
    if "?" in text:
        grams.add("p ?")
    mask = (1 << TEXT_HASH_BITS) - 1
    return sorted({zlib.crc32(g.encode()) & mask for g in grams})


class TextScorer:
    """Escalation log-odds of a first message from its hashed n-grams (:func:`text_grams`), learned on the
    platform's tickets by an L2-regularised logistic regression; rows are the distinct texts weighted by how often
    each escalated or not, so fitting costs the number of distinct messages, not of tickets.

    Scoring one message is a sum of a few dozen weights (plain Python, microseconds); the same arithmetic in bulk
    gives the same floats.
    """

    def __init__(self, C: float = 1.0):
        self.C = C

    @staticmethod
    def _rows(texts: Sequence[str | None]):
        from scipy import sparse

        idx = [text_grams(t) for t in texts]
        indptr = np.cumsum([0] + [len(g) for g in idx])
        cols = np.fromiter((c for g in idx for c in g), dtype=np.int64, count=int(indptr[-1]))
        vals = np.repeat([1.0 / math.sqrt(len(g)) if g else 0.0 for g in idx], [len(g) for g in idx])
        return sparse.csr_matrix((vals, cols, indptr), shape=(len(idx), 1 << TEXT_HASH_BITS))

    def fit(self, texts: pd.Series | Sequence[str | None], y) -> TextScorer:
        from sklearn.linear_model import LogisticRegression

        s = pd.Series(texts, dtype="object").where(lambda v: v.map(lambda x: isinstance(x, str)), None)
        y = np.asarray(y, dtype=np.float64)
        codes, uniques = pd.factorize(s, use_na_sentinel=False)
        pos = np.bincount(codes, weights=y, minlength=len(uniques))
        n = np.bincount(codes, minlength=len(uniques)).astype(np.float64)
        X = self._rows(list(uniques))
        from scipy import sparse

        used = np.unique(X.indices)  # fit on the grams that occur only (a few thousand of the 2^18 buckets)
        XX = sparse.vstack([X, X]).tocsr()[:, used]
        yy = np.r_[np.ones(len(uniques)), np.zeros(len(uniques))]
        ww = np.r_[pos, n - pos]
        keep = ww > 0
        self.weights_ = np.zeros(1 << TEXT_HASH_BITS)
        if len(np.unique(yy[keep])) < 2:
            self.bias_ = float(np.log((pos.sum() + 0.5) / (n.sum() - pos.sum() + 0.5)))
            return self
        lr = LogisticRegression(C=self.C, max_iter=1000, solver="lbfgs")
        # weighted by ticket counts: the log-likelihood is the tickets', the L2 penalty a unit prior on each weight
        lr.fit(XX[keep], yy[keep], sample_weight=ww[keep])
        self.weights_[used] = lr.coef_[0]
        self.bias_ = float(lr.intercept_[0])
        return self

    def score_one(self, text: str | None) -> float:
        """The message's escalation log-odds (bias alone for an empty message)."""
        g = text_grams(text)
        if not g:
            return self.bias_
        w = self.weights_
        return self.bias_ + sum(float(w[i]) for i in g) / math.sqrt(len(g))

    def score(self, texts: pd.Series | Sequence[str | None]) -> Arr:
        """:meth:`score_one` of many messages (each distinct text scored once)."""
        s = pd.Series(texts, dtype="object")
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        table = np.array([self.score_one(t if isinstance(t, str) else None) for t in uniques] + [self.score_one(None)],
                         dtype=np.float64)
        return table[np.where(codes < 0, len(uniques), codes)]


def out_of_fold_text_scores(texts: pd.Series, y: Arr, folds: int = 5, C: float = 1.0) -> Arr:
    """Text scores of training rows from scorers that did not see them (``folds`` contiguous blocks of the rows in
    time order), so the booster learns how much the text score is worth on texts it was not fitted on."""
    texts = pd.Series(texts, dtype="object").reset_index(drop=True)
    y = np.asarray(y, dtype=np.float64)
    out = np.empty(len(texts))
    for part in np.array_split(np.arange(len(texts)), folds):
        rest = np.setdiff1d(np.arange(len(texts)), part, assume_unique=True)
        out[part] = TextScorer(C).fit(texts.iloc[rest], y[rest]).score(texts.iloc[part])
    return out
