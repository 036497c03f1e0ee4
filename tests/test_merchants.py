"""Merchant features and the ranker: point in time, shrinkage, the label window, flags, ties, reasons, the contract."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import load_dataset
from features.merchants import (
    FEATURES,
    AsOfError,
    MerchantRiskModel,
    build_features,
    build_labels,
    build_snapshots,
    complaint_counts,
    late_delivery_counts,
    prepare_events,
    shrink_rates,
)

WORLD = dict(seed=5, accounts=1500, merchants=50, start="2023-01-01", days=420, market="CN", progress=False)
AS_OF = pd.Timestamp("2023-09-30", tz="UTC")


@pytest.fixture(scope="session")
def world(world_factory) -> Path:
    return world_factory(**WORLD)


@pytest.fixture(scope="session")
def events(world):
    return prepare_events(load_dataset(world))


@pytest.fixture(scope="session")
def fitted(events) -> MerchantRiskModel:
    dates = pd.date_range("2023-04-01", "2023-08-01", freq="14D", tz="UTC")
    return MerchantRiskModel(kind="poisson", n_estimators=60).fit(build_snapshots(events, dates))


# --------------------------------------------------------------------------------------------------------------------
# A hand-made data folder where every count is known


def _ts(s) -> pd.Timestamp:
    t = pd.Timestamp(s)
    return t if t.tzinfo else t.tz_localize("UTC")


def _handmade(folder: Path) -> Path:
    """Toys merchants T00..T09 (100 orders each in Feb-Mar 2024, 5-14% late), a 3-order merchant SMALL (all late,
    one complaint), OLD (orders only on 1 Jan), LATE (point-in-time delivery cases), and tickets around 31 Mar."""
    orders, tickets, n = [], [], 0

    def order(m, at, promise, delivered, cat="toys"):
        nonlocal n
        n += 1
        orders.append({"order_id": f"O{n}", "merchant_id": m, "ordered_at": _ts(at), "category": cat,
                       "quantity": 1, "amount": 10.0, "promised_delivery_at": _ts(promise),
                       "delivered_at": _ts(delivered) if delivered else pd.NaT})
        return f"O{n}"

    def ticket(m, at, case="complaint", escalated=None, resolved=None):
        tickets.append({"ticket_id": f"T{len(tickets)}", "created_at": _ts(at), "merchant_id": m,
                        "case_type": case, "channel": "chat", "escalated": escalated,
                        "resolved_at": _ts(resolved) if resolved else pd.NaT})

    days = pd.date_range("2024-02-01", "2024-03-20", periods=100, tz="UTC")
    for i in range(10):
        for j, d in enumerate(days):
            late = j < 5 + i  # 5%..14% late
            order(f"T{i:02d}", d, d + pd.Timedelta(days=3), d + pd.Timedelta(days=5 if late else 2))
        for j in range(2 + i % 3):  # a few complaints each
            ticket(f"T{i:02d}", f"2024-03-{10 + j}")
        for d in pd.date_range("2024-04-02", "2024-05-20", periods=30, tz="UTC"):  # label-window orders
            order(f"T{i:02d}", d, d + pd.Timedelta(days=3), d + pd.Timedelta(days=2))
    for d in ("2024-03-01", "2024-03-05", "2024-03-09"):
        order("SMALL", d, _ts(d) + pd.Timedelta(days=2), _ts(d) + pd.Timedelta(days=6))
    ticket("SMALL", "2024-03-12")
    order("OLD", "2024-01-01", "2024-01-03", "2024-01-02")
    # LATE: promise passed before the cutoff, delivered after it (late, known by the as-of date) ...
    order("LATE", "2024-03-25", "2024-03-29", "2024-04-05")
    # ... promise after the as-of date: not counted even though it arrived on time before the cutoff ...
    order("LATE", "2024-03-29", "2024-04-02", "2024-03-30")
    # ... promise passed, delivered on time.
    order("LATE", "2024-03-20", "2024-03-24", "2024-03-22")
    # Label window of T00 (as-of 2024-03-31 -> days 1 Apr .. 30 May).
    ticket("T00", "2024-03-31 23:00")  # the as-of day: a feature, not the label
    ticket("T00", "2024-04-01 10:00")  # first label day
    ticket("T00", "2024-05-30 18:00")  # last label day
    ticket("T00", "2024-05-31 01:00")  # after the window
    ticket("T00", "2024-04-10", case="return", escalated=True, resolved="2024-06-20")  # escalation, resolved late
    # Escalation known only once resolved: created before the as-of date, resolved after it.
    ticket("T01", "2024-03-20", case="return", escalated=True, resolved="2024-04-03")
    ticket("T01", "2024-03-21", case="return", escalated=False, resolved="2024-03-22")
    # Something on the data's last day so the data covers the label window.
    order("T09", "2024-06-30", "2024-07-03", None)
    folder.mkdir(parents=True, exist_ok=True)
    o = pd.DataFrame(orders)
    o["line_no"] = 1
    o.to_parquet(folder / "orders.parquet")
    pd.DataFrame({"return_id": ["R1"], "order_id": ["O1"], "merchant_id": ["T00"], "requested_at": [_ts("2024-02-20")],
                  "reason": ["defective"], "quantity": [1], "refund_amount": [10.0]}).to_parquet(
        folder / "returns.parquet")
    t = pd.DataFrame(tickets)
    t["escalated"] = t["escalated"].astype("boolean")
    t.to_parquet(folder / "tickets.parquet")
    return folder


@pytest.fixture(scope="session")
def hand(tmp_path_factory):
    folder = _handmade(tmp_path_factory.mktemp("merchants_hand") / "data")
    ds = load_dataset(folder)
    assert ds.n_rejected == 0, ds.rejects
    return prepare_events(ds)


HAND_AS_OF = "2024-03-31"


# --------------------------------------------------------------------------------------------------------------------
# Point in time


def _as_known_on(world: Path, out: Path, as_of: pd.Timestamp) -> Path:
    """The world as an export taken at the end of ``as_of`` would have shown it."""
    cut = as_of + pd.Timedelta(days=1)
    out.mkdir(parents=True, exist_ok=True)
    o = pd.read_parquet(world / "orders.parquet")
    o = o[o["ordered_at"] < cut].copy()
    o.loc[o["delivered_at"] >= cut, "delivered_at"] = pd.NaT  # not yet delivered then
    o.to_parquet(out / "orders.parquet")
    r = pd.read_parquet(world / "returns.parquet")
    r[r["requested_at"] < cut].to_parquet(out / "returns.parquet")
    t = pd.read_parquet(world / "tickets.parquet")
    t = t[t["created_at"] < cut].copy()
    still_open = t["resolved_at"].isna() | (t["resolved_at"] >= cut)
    t.loc[still_open, "resolved_at"] = pd.NaT
    t["escalated"] = t["escalated"].astype("boolean")
    t.loc[still_open, "escalated"] = pd.NA  # unknown until the case closes
    t.to_parquet(out / "tickets.parquet")
    return out


def test_data_after_as_of_does_not_change_features(world, events, tmp_path):
    full = build_features(events, AS_OF)
    cut_events = prepare_events(load_dataset(_as_known_on(world, tmp_path / "cut", AS_OF)))
    assert cut_events.end == AS_OF
    past = build_features(cut_events, AS_OF)
    pd.testing.assert_frame_equal(full, past.loc[full.index], check_exact=False, rtol=1e-9)
    assert len(past) == len(full)
    # The check has teeth: features a month later are different.
    later = build_features(events, AS_OF + pd.Timedelta(days=30))
    assert not np.allclose(later.loc[full.index, "complaint_rate_30d"], full["complaint_rate_30d"])


def test_late_deliveries_count_only_promises_passed_by_as_of(hand):
    counts = late_delivery_counts(hand, HAND_AS_OF, days=90)
    # LATE: the order delivered after the cutoff is late (its promise passed); the order promised after the
    # as-of date does not count even though it arrived before the cutoff.
    assert counts.loc["LATE"].tolist() == [1.0, 2.0]
    assert counts.loc["SMALL"].tolist() == [3.0, 3.0]
    very = late_delivery_counts(hand, HAND_AS_OF, days=90, grace_days=2)
    assert very.loc["LATE"].tolist() == [1.0, 2.0]  # 29 Mar + 2 days passed; 24 Mar on time


def test_escalation_counts_only_once_resolved(hand):
    # T01: 2 complaint cases + 1 escalation resolved on 3 Apr + 1 non-escalated case
    before = complaint_counts(hand, HAND_AS_OF, days=90)
    after = complaint_counts(hand, "2024-04-03", days=90)
    assert before.loc["T01"] == 3 and after.loc["T01"] == 4


def test_as_of_outside_the_data_is_a_clear_error(hand):
    with pytest.raises(AsOfError, match="outside the data"):
        build_features(hand, "2023-12-31")
    with pytest.raises(AsOfError, match="outside the data"):
        build_features(hand, "2024-07-01")
    with pytest.raises(AsOfError, match="not a date"):
        build_features(hand, "last tuesday")
    with pytest.raises(AsOfError, match="not matured"):
        build_labels(hand, "2024-06-01")


# --------------------------------------------------------------------------------------------------------------------
# Empirical Bayes


def test_shrinkage_pulls_a_three_order_merchant_toward_its_category(hand):
    f = build_features(hand, HAND_AS_OF)
    toys = f.loc[[f"T{i:02d}" for i in range(10)]]
    small = f.loc["SMALL"]
    assert small["category"] == "toys"
    # Raw: 3 of 3 late, 1 complaint on 3 orders. Shrunk: much nearer the toys merchants (~10% late, ~3% complaints).
    assert small["late_rate_90d"] < 0.5
    assert small["late_rate_90d"] > toys["late_rate_90d"].max()  # still the worst: shrinkage keeps the order
    assert small["complaint_rate_90d"] < 0.1
    assert abs(small["cat_late_rate_90d"] - toys["late_rate_90d"].mean()) < 0.03
    # A big merchant keeps (nearly) its own rate.
    big = late_delivery_counts(hand, HAND_AS_OF).loc["T09"]
    assert abs(f.loc["T09", "late_rate_90d"] - big["late"] / big["due"]) < 0.02


def test_shrink_rates_strength_follows_the_spread_between_merchants():
    rng = np.random.default_rng(0)
    n = np.full(40, 400.0)
    group = np.zeros(40, int)
    same = rng.binomial(400, 0.1, 40).astype(float)  # all merchants alike: pull hard
    varied = rng.binomial(400, rng.uniform(0.02, 0.3, 40)).astype(float)  # truly different: pull little
    for k, pull in ((same, "strong"), (varied, "weak")):
        kk, nn = np.append(k, 3.0), np.append(n, 3.0)
        rate, prior = shrink_rates(kk, nn, np.append(group, 0))
        assert abs(prior[-1] - kk.sum() / nn.sum()) < 1e-12
        if pull == "strong":
            assert rate[-1] < 0.2
        else:
            assert 0.2 < rate[-1] < 1.0
    rate, _ = shrink_rates(np.array([0.0, 5.0]), np.array([0.0, 10.0]), np.array([0, 0]), kind="poisson")
    assert np.isfinite(rate).all()  # no orders -> the prior mean, not NaN


# --------------------------------------------------------------------------------------------------------------------
# Label, flags


def test_label_window_is_the_days_after_as_of(hand):
    lab = build_labels(hand, HAND_AS_OF, horizon_days=60).loc["T00"]
    # 1 Apr 10:00 and 30 May 18:00 complaint cases plus the escalation created 10 Apr (resolved later: the label
    # uses the data as finally known); not 31 Mar (the as-of day) nor 31 May.
    assert lab["label_complaints"] == 3
    assert lab["label_orders"] == 30
    assert lab["label_rate"] == pytest.approx(3 / 30)
    short = build_labels(hand, HAND_AS_OF, horizon_days=30).loc["T00"]
    assert short["label_complaints"] == 2  # configurable window: 30 days ends 30 Apr


def test_no_orders_and_new_merchants_are_flagged_and_ranked(hand, fitted):
    f = build_features(hand, HAND_AS_OF)
    assert "OLD" in f.index and "no_orders_in_window" in f.loc["OLD", "flag"]
    assert f.loc["OLD", "orders_90d"] == 0
    assert "new_merchant" in f.loc["LATE", "flag"]  # first order 20 Mar
    ranking = fitted.rank(f)
    assert set(ranking["merchant_id"]) == set(f.index)
    assert ranking.loc[ranking["merchant_id"] == "OLD", "flag"].item().startswith("no_orders_in_window")
    assert ranking["rank"].tolist() == list(range(1, len(f) + 1))
    assert ranking["score"].is_monotonic_decreasing


# --------------------------------------------------------------------------------------------------------------------
# The fitted model


def test_ties_are_broken_by_merchant_id_whatever_the_input_order(events, fitted):
    f = build_features(events, AS_OF)
    twin = pd.concat([f.iloc[[0]]] * 4)
    twin.index = pd.Index(["Z9", "A1", "M5", "B2"], dtype="string", name="merchant_id")
    frame = pd.concat([f, twin])
    a = fitted.rank(frame)
    b = fitted.rank(frame.sample(frac=1.0, random_state=1))
    pd.testing.assert_frame_equal(a, b)
    twins = a[a["merchant_id"].isin(["Z9", "A1", "M5", "B2"])]
    assert twins["merchant_id"].tolist() == ["A1", "B2", "M5", "Z9"] and twins["score"].nunique() == 1
    tied = a[a["score"] == twins["score"].iloc[0]]  # every merchant with that score, in id order, ranks in a row
    assert tied["merchant_id"].tolist() == sorted(tied["merchant_id"]) and np.all(np.diff(tied["rank"]) == 1)


def test_risky_merchants_rank_higher(world, events, fitted):
    truth = pd.read_parquet(world / "truth" / "merchants.parquet").set_index("merchant_id")
    dates = pd.date_range("2023-10-01", "2024-01-15", freq="21D", tz="UTC")  # after the training snapshots
    pct = []
    for d in dates:
        r = fitted.rank(build_features(events, d))
        r["pct"] = 1 - (r["rank"] - 1) / len(r)
        r["risky"] = r["merchant_id"].map(truth["risky"]).astype(bool)
        pct.append(r)
    pct = pd.concat(pct)
    assert pct["risky"].any()
    means = pct.groupby("risky")["pct"].mean()
    assert means[True] > means[False] + 0.15, means


def test_reasons_are_sentences_from_the_largest_contributions(events, fitted):
    f = build_features(events, AS_OF)
    ranking = fitted.rank(f)
    top = ranking.iloc[0]
    assert "%" in top["reasons"] and len(top["reasons"].split("; ")) <= 3
    contrib = fitted.contributions(f.loc[[top["merchant_id"]]]).iloc[0]
    from features.merchants import REASON_GROUPS
    best = max(REASON_GROUPS, key=lambda g: contrib[list(REASON_GROUPS[g])].sum())
    first_words = {"late": "late deliveries", "quality": "defective", "returns": "returns", "complaints": "complaints",
                   "complaint_trend": "complaints rising", "escalations": "escalations", "tickets": "tickets",
                   "volume": "orders", "tenure": "", "category": "category"}
    assert first_words[best] in top["reasons"].split("; ")[0]
    assert (ranking["expected_complaints"] >= 0).all()


def test_model_contract(events, fitted):
    f = build_features(events, AS_OF)
    fresh = MerchantRiskModel(kind="lambdarank", n_estimators=20)
    assert fresh.get_params()["kind"] == "lambdarank" and not hasattr(fresh, "poisson_booster_")
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.predict(f)
    snaps = build_snapshots(events, pd.date_range("2023-04-01", "2023-08-01", freq="14D", tz="UTC"))
    assert fresh.fit(snaps) is fresh and fresh.ranker_booster_ is not None
    assert len(fresh.predict(f)) == len(f)
    clone = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(clone.predict(f), fitted.predict(f))
    with pytest.raises(ValueError, match="lacks columns"):
        fitted.predict(f.drop(columns=[FEATURES[0]]))
    with pytest.raises(ValueError, match="kind"):
        MerchantRiskModel(kind="xgb").fit(snaps)


def test_path_contributions_add_up_to_the_score_and_agree_with_shap(events, fitted):
    f = build_features(events, AS_OF)
    fast, exact = fitted.contributions(f), fitted.contributions(f, exact=True)
    raw = fitted.poisson_booster_.predict(f[list(FEATURES)], raw_score=True)
    np.testing.assert_allclose(fast.sum(axis=1) + fitted.path_bias_, raw, atol=1e-9)
    # Same totals up to the bias (SHAP's expected value is a data average, not the root's value).
    gap = exact.sum(axis=1) - fast.sum(axis=1)
    assert gap.max() - gap.min() < 1e-6
    agree = (fast.to_numpy().argmax(axis=1) == exact.to_numpy().argmax(axis=1)).mean()
    assert agree > 0.8


def test_blend_adds_the_two_standardised_scores_and_its_reasons_add_up(events):
    dates = pd.date_range("2023-04-01", "2023-08-01", freq="14D", tz="UTC")
    blend = MerchantRiskModel(kind="blend", n_estimators=40).fit(build_snapshots(events, dates))
    f = build_features(events, AS_OF)
    parts = blend.blend_parts(f)
    raw_p = blend.poisson_booster_.predict(f[list(FEATURES)], raw_score=True)
    raw_l = blend.ranker_booster_.predict(f[list(FEATURES)], raw_score=True)
    # each part is its booster's margin through a fixed increasing linear map (the same for one row or many)
    for part, raw in ((parts[:, 0], raw_p), (parts[:, 1], raw_l)):
        slope = np.polyfit(raw, part, 1)[0]
        assert slope > 0 and np.allclose(part, np.polyval(np.polyfit(raw, part, 1), raw), atol=1e-9)
    assert np.allclose(blend.predict(f), parts.sum(axis=1))
    assert np.allclose(blend.predict(f.iloc[[3]]), blend.predict(f)[3])
    np.testing.assert_allclose(blend.contributions(f).sum(axis=1) + blend.path_bias_, blend.predict(f), atol=1e-9)
    assert np.allclose(blend.expected_rate(f), np.exp(raw_p))  # expected complaints stay the Poisson model's
    assert all(isinstance(r, str) and r for r in blend.reasons(f.head(5)))


def test_complaint_link_learns_the_platforms_link_and_flags_fresh_trouble():
    """Complaints that follow very-late deliveries: the link is learned from the merchants' past; a merchant whose
    deliveries went bad in the last 30 days gets a higher operations-implied rate than its 90-day one, and a
    merchant with more complaints than its operations explain a propensity above 1."""
    from features.merchants import SHRUNK_RATES, complaint_link, finish_merchant_features

    rng = np.random.default_rng(0)
    n = 60
    vl = rng.uniform(0.0, 0.4, n)  # very-late share, stable over the year
    orders = np.full(n, 1000.0)
    complaints = rng.poisson(orders * 0.002 * np.exp(6.0 * vl)).astype(float)
    complaints[1] *= 3  # customers of merchant 1 complain three times as readily
    counts = pd.DataFrame(index=pd.Index([f"M{i:02d}" for i in range(n)], name="merchant_id"))
    for name in SHRUNK_RATES:
        counts[f"_k_{name}"], counts[f"_n_{name}"] = 0.0, 1000.0
    for w in ("30", "90", "365", "prev60"):
        counts[f"_k_very_late_{w}"] = vl * 1000
        counts[f"_k_late_{w}"] = vl * 1000
    counts.loc["M00", ["_k_very_late_30", "_k_late_30"]] = 700.0  # fresh trouble: 70% very late this month
    counts["_k_complaints_365"], counts["_n_complaints_365"] = complaints, orders
    for c in FEATURES:
        if not any(c == k for k in counts.columns):
            counts[c] = 0.0
    counts["category"], counts["flag"], counts["_known"] = "toys", "", True
    for c in ("baseline_rate", "baseline_count", "expected_orders"):
        counts[c] = 0.0
    shrunk = {name: shrink_rates(counts[f"_k_{name}"].to_numpy(), counts[f"_n_{name}"].to_numpy(),
                                 counts["category"].to_numpy(dtype=object), kind=kind)
              for name, kind in SHRUNK_RATES.items()}
    link = complaint_link(counts, shrunk)
    assert link["ops_complaint_rate_30d"][0] > 2 * link["ops_complaint_rate_90d"][0]
    assert link["ops_complaint_trend"][0] > 0
    assert link["complaint_propensity"][1] > 1.8
    assert np.median(link["complaint_propensity"]) == pytest.approx(1.0, abs=0.25)
    # Riskier operations, higher implied rate (the link's sign is learned, not assumed).
    others = np.arange(2, n)
    rho = pd.Series(vl[others]).corr(pd.Series(link["ops_complaint_rate_90d"][others]), method="spearman")
    assert rho > 0.8
    assert finish_merchant_features(counts)["ops_complaint_rate_30d"].notna().all()


def test_glm_ranks_by_its_log_linear_rate_and_its_reasons_are_its_terms(events):
    dates = pd.date_range("2023-04-01", "2023-08-01", freq="14D", tz="UTC")
    glm = MerchantRiskModel(kind="glm", n_estimators=20).fit(build_snapshots(events, dates))
    f = build_features(events, AS_OF)
    score = glm.predict(f)
    assert np.allclose(score, glm.expected_rate(f))  # the model that ranks gives the expected complaints
    np.testing.assert_allclose(np.log(score), glm.glm_intercept_ + glm.contributions(f).sum(axis=1), atol=1e-9)
    assert np.allclose(glm.predict(f.iloc[[3]]), score[3])  # one merchant scores alike alone or in a batch
    # More complaints, all else equal, never lowers the score (the GLM learned complaints predict complaints).
    worse = f.copy()
    for c in ("complaint_rate_90d", "complaint_rate_180d", "complaint_rate_365d"):
        worse[c] = worse[c] * 3
    assert (glm.predict(worse) >= score - 1e-12).all() and (glm.predict(worse) > score).any()
    assert all(isinstance(r, str) and r for r in glm.reasons(f.head(5)))
    assert pickle.loads(pickle.dumps(glm)).predict(f).tolist() == score.tolist()


def test_a_new_merchant_with_1_complaint_in_2_orders_ranks_below_one_with_30_in_100():
    # A category of 30 established merchants around 5% complaints per order, plus the two in question.
    rng = np.random.default_rng(1)
    n = rng.integers(100, 800, 30).astype(float)
    k = rng.poisson(n * rng.uniform(0.02, 0.08, 30)).astype(float)
    k, n = np.append(k, [1.0, 30.0]), np.append(n, [2.0, 100.0])
    rate, prior = shrink_rates(k, n, np.zeros(len(k), int), kind="poisson")
    new, established = rate[-2], rate[-1]
    assert 1 / 2 > 30 / 100  # raw rates rank the new merchant first
    assert new < established  # shrunk: two orders say little, a hundred say a lot
    assert abs(new - prior[-2]) < abs(0.5 - prior[-2]) / 4  # the new merchant sits near its category's rate
