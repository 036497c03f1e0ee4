"""Ring (link-group) evidence of the serial-returner cold start: the rest of the group's record, each member's counts
capped at what the platform's own accounts reach."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import beta

import features.account_features as af
from features.account_detector import PatternDetector, _beta_prior
from features.accounts import account_features

AS_OF = pd.Timestamp("2023-09-30", tz="UTC")


def _population(rng: np.random.Generator) -> tuple[pd.Index, dict[str, np.ndarray]]:
    """300 ordinary accounts (20 lines, about 10% returned), then a household (H0 a heavy returner, H1 ordinary) and
    a ring of four (R0-R3, each only mildly elevated)."""
    n_plain = 300
    ids = [f"P{i:03d}" for i in range(n_plain)] + ["H0", "H1", "R0", "R1", "R2", "R3"]
    lines = np.full(len(ids), 20.0)
    returns = np.concatenate([rng.binomial(20, rng.beta(4, 36, n_plain)).astype(float), [18, 2, 4, 4, 4, 4]])
    f = {"lines_365d": lines, "returns_365d": returns, "lines_90d": lines / 4, "returns_90d": returns / 4,
         "refund_without_return_365d": np.zeros(len(ids)), "claims_on_delivered_365d": np.zeros(len(ids))}
    return pd.Index(ids, name="account_id"), f


def _links(pairs: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["account_id", "link_type", "link_value"])


def test_ring_record_is_the_rest_of_the_group_with_each_member_capped():
    index, f = _population(np.random.default_rng(3))
    links = _links([("H0", "address", "home"), ("H1", "address", "home"),
                    *((f"R{i}", "device", "dev-x") for i in range(4)), ("R0", "payment", "card-y"),
                    ("R2", "payment", "card-y")])
    out = af._link_features(links, index, f, af.MAX_LINK_SHARE)
    rec = pd.DataFrame({k: out[k] for k in ("ring_lines_365d", "ring_returns_365d", "link_group_size")}, index=index)
    a, b = _beta_prior(f["returns_365d"], f["lines_365d"])
    cap = np.ceil(beta.ppf(af.RING_MEMBER_QUANTILE, a, b) * 20)
    assert 4 <= cap < 18  # the platform's own cap: above the ring's mild members, below the heavy returner
    # The account's own record is not in its ring record (its own tests read it): H0 sees only H1's 2 returns.
    assert rec.loc["H0", "ring_returns_365d"] == 2 and rec.loc["H0", "ring_lines_365d"] == 20
    # H1 sees H0's 18 returns only up to the cap: one heavy returner does not make its household a ring.
    assert rec.loc["H1", "ring_returns_365d"] == cap
    # Every ring member sees the other three, uncapped (each is only mildly elevated), whoever is strongest.
    assert (rec.loc[["R0", "R1", "R2", "R3"], "ring_returns_365d"] == 12).all()
    assert (rec.loc[["R0", "R1", "R2", "R3"], "ring_lines_365d"] == 60).all()
    assert (rec.loc[index.str.startswith("P"), "ring_returns_365d"] == 0).all()  # no links, no record


def test_capped_counts_follow_the_platform_not_a_constant():
    rng = np.random.default_rng(5)
    lines = np.full(2000, 30.0)
    low = rng.binomial(30, rng.beta(2, 38, 2000)).astype(float)  # about 5% returned
    high = rng.binomial(30, rng.beta(8, 24, 2000)).astype(float)  # about 25% returned
    heavy = np.array([25.0])
    capped_low = af._capped_counts(np.concatenate([low, heavy]), np.append(lines, 30.0))
    cap_low = capped_low[-1]
    cap_high = af._capped_counts(np.concatenate([high, heavy]), np.append(lines, 30.0))[-1]
    assert cap_low < cap_high < 25  # a high-return platform tolerates more before a member's count is capped
    assert np.array_equal(capped_low[:-1], np.minimum(low, cap_low))  # the body untouched, the rest at the cap
    assert (low > cap_low).mean() < 0.05


def test_partners_of_a_lone_abuser_stay_ordinary_and_rings_rank_together(account_world, monkeypatch):
    """On a generated world: ring members get their group's evidence, while the linked partners of a single
    abuser (an abuser's household, not a ring) do not inherit the abuser's record; without the cap they would."""
    ds, truth = account_world
    X = account_features(ds.orders, ds.returns, ds.account_links, AS_OF, market="CN")
    active = truth["is_abuser"] & (truth["abuse_start"] <= AS_OF)
    tr = truth.reindex(X.index)
    abuser = active.reindex(X.index, fill_value=False).to_numpy()
    pairs = af.link_pairs(ds.account_links, X.index)
    label = af._components(pairs, len(X))
    n_ab = np.bincount(label, weights=abuser.astype(float))[label]
    size = np.bincount(label)[label]
    ring = (tr["pattern"] == "ring").to_numpy() & abuser
    partners = ~abuser & (size > 1) & (n_ab == 1) & (np.bincount(label, weights=ring.astype(float))[label] == 0)
    assert partners.sum() >= 5 and ring.sum() >= 8
    tails = PatternDetector().fit(X).tails(X)["ring"].to_numpy()
    monkeypatch.setattr(af, "RING_MEMBER_QUANTILE", 1.0)  # no cap: every member's whole record counts
    X_uncapped = account_features(ds.orders, ds.returns, ds.account_links, AS_OF, market="CN")
    uncapped = PatternDetector().fit(X_uncapped).tails(X_uncapped)["ring"].to_numpy()
    assert np.mean(tails[partners]) < np.mean(uncapped[partners])
    assert np.median(tails[partners]) < np.median(tails[ring])
    # Ring members rank in the population's top on the ring test, and the members of one ring together.
    pct = pd.Series(tails).rank(pct=True).to_numpy()
    assert np.median(pct[ring]) > 0.95
    spread = pd.Series(pct[ring]).groupby(tr["ring_id"].to_numpy()[ring]).agg(lambda s: s.max() - s.min())
    assert spread.median() < 0.05


def test_deep_beta_binomial_tails_are_exact_not_rounding_error():
    """-log10 P(X >= k) far out in the tail: scipy's 1 - cdf is rounding error there (400 returns of 400 lines read
    about 1e-13); the detector sums the point masses instead, so more of the same evidence is never weaker and the
    figure equals the exact sum, without a RuntimeWarning."""
    import warnings

    from scipy.special import logsumexp
    from scipy.stats import betabinom

    from features.account_detector import _log10_tail

    a, b = 0.5, 20.0
    k = np.array([5.0, 50.0, 100.0, 200.0, 400.0])
    n = np.array([10.0, 60.0, 100.0, 200.0, 400.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = _log10_tail(k, n, a, b)
    exact = [-logsumexp(betabinom.logpmf(np.arange(int(kk), int(nn) + 1), int(nn), a, b)) / np.log(10)
             for kk, nn in zip(k, n, strict=True)]
    np.testing.assert_allclose(t, exact, rtol=1e-6)
    assert np.all(np.diff(t[2:]) > 0)  # all of 100, 200, 400 lines returned: ever rarer
