"""Account features and the serial-returner models: point in time, guests, links, wardrobing, reasons, contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.account_model import DECISION_LINK_COLUMNS, LOGISTIC_COLUMNS
from features.accounts import (
    FEATURES,
    AsOfError,
    PatternDetector,
    SerialReturnerModel,
    account_features,
    check_as_of,
    link_pairs,
    review_queue,
    score_snapshot,
)
from training.serial_returners import learner_text

AS_OF = pd.Timestamp("2023-09-30", tz="UTC")


@pytest.fixture(scope="session")
def feats(account_world):
    ds, _ = account_world
    return account_features(ds.orders, ds.returns, ds.account_links, AS_OF, market="CN")


def _ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def _orders(rows: list[tuple]) -> pd.DataFrame:
    """rows: (order_id, account_id, ordered_at, category, amount, delivered_at)."""
    f = pd.DataFrame(rows, columns=["order_id", "account_id", "ordered_at", "category", "amount", "delivered_at"])
    f["line_no"], f["quantity"], f["merchant_id"] = 1, 1, "M1"
    for c in ("order_id", "account_id", "category", "merchant_id"):
        f[c] = f[c].astype("string")
    for c in ("ordered_at", "delivered_at"):
        f[c] = pd.to_datetime(f[c], utc=True).dt.as_unit("us")
    return f


def _returns(rows: list[tuple]) -> pd.DataFrame:
    """rows: (return_id, order_id, account_id, requested_at, reason, refund_amount, item_returned)."""
    f = pd.DataFrame(rows, columns=["return_id", "order_id", "account_id", "requested_at", "reason", "refund_amount",
                                    "item_returned"])
    f["quantity"], f["merchant_id"] = 1, "M1"
    for c in ("return_id", "order_id", "account_id", "reason", "merchant_id"):
        f[c] = f[c].astype("string")
    f["requested_at"] = pd.to_datetime(f["requested_at"], utc=True).dt.as_unit("us")
    f["item_returned"] = f["item_returned"].astype("boolean")
    return f


def _links(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["account_id", "link_type", "link_value"]).astype("string")


# --------------------------------------------------------------------------------------------------------------------
# Point in time


def test_data_after_as_of_changes_nothing(account_world, feats):
    ds, _ = account_world
    cut = AS_OF + pd.Timedelta(days=1)
    orders = ds.orders[ds.orders["ordered_at"] < cut].copy()
    # A delivery after the as-of day was unknown at the time.
    orders["delivered_at"] = orders["delivered_at"].where(orders["delivered_at"] < cut)
    returns = ds.returns[ds.returns["requested_at"] < cut]
    assert len(orders) < len(ds.orders) and len(returns) < len(ds.returns)  # the cut removes data
    cut_feats = account_features(orders, returns, ds.account_links, AS_OF, market="CN")
    pd.testing.assert_frame_equal(feats, cut_feats)


def test_later_as_of_sees_more(account_world, feats):
    ds, _ = account_world
    later = account_features(ds.orders, ds.returns, ds.account_links, AS_OF + pd.Timedelta(days=60), market="CN")
    assert later["returns_365d"].sum() > feats["returns_365d"].sum()


def test_as_of_outside_the_data_is_refused(account_world):
    ds, _ = account_world
    span = ds.time_span()
    with pytest.raises(AsOfError, match="before the data starts"):
        check_as_of(span[0] - pd.Timedelta(days=1), span)
    with pytest.raises(AsOfError, match="after the data ends"):
        check_as_of(span[1] + pd.Timedelta(days=1), span)
    assert check_as_of(span[1], span) == span[1]


# --------------------------------------------------------------------------------------------------------------------
# Guests, counts, rates, wardrobing, links


def test_guests_are_never_accounts(account_world, feats):
    ds, _ = account_world
    assert ds.returns["account_id"].isna().any()  # the account_world has guest returns
    assert feats.index.notna().all()
    known = pd.concat([ds.orders.loc[ds.orders["ordered_at"] <= AS_OF + pd.Timedelta(days=1), "account_id"],
                       ds.returns.loc[ds.returns["requested_at"] <= AS_OF + pd.Timedelta(days=1), "account_id"]])
    assert set(feats.index) == set(known.dropna())
    model = SerialReturnerModel().fit(feats)
    queue = review_queue(feats, model, 30)
    assert queue["account_id"].notna().all() and len(queue) == 30


def test_guest_with_many_returns_is_not_flagged():
    orders = _orders([(f"O{i}", None if i < 20 else f"A{i}", "2023-05-01", "home", 20.0, "2023-05-03")
                      for i in range(60)])
    returns = _returns([(f"R{i}", f"O{i}", None, "2023-05-10", "changed_mind", 20.0, True) for i in range(20)])
    X = account_features(orders, returns, None, "2023-06-01")
    assert len(X) == 40 and X["returns_365d"].sum() == 0  # the guest's 20 returns belong to no account


def test_counts_windows_and_shrunk_rates():
    orders = _orders([("O1", "A", "2023-01-05", "home", 10.0, "2023-01-07"),
                      ("O2", "A", "2023-05-20", "home", 10.0, "2023-05-22"),
                      ("O3", "B", "2023-05-20", "home", 10.0, "2023-05-22")]
                     + [(f"C{i}", "C", "2023-05-20", "home", 10.0, "2023-05-22") for i in range(6)])
    returns = _returns([("R1", "O1", "A", "2023-01-20", "defective", 10.0, True),
                        ("R2", "O2", "A", "2023-05-25", "changed_mind", 10.0, True),
                        ("R3", "O3", "B", "2023-05-25", "not_received", 10.0, False)])
    X = account_features(orders, returns, None, "2023-06-01")
    a = X.loc["A"]
    assert (a["returns_30d"], a["returns_90d"], a["returns_365d"]) == (1, 1, 2)
    assert a["days_order_to_return"] == pytest.approx(10.0, abs=0.01)  # median of 15 and 5 days
    assert a["share_changed_mind"] == 0.5 and a["share_defective"] == 0.5
    assert X.loc["B", "refund_without_return_90d"] == 1 and a["refund_without_return_90d"] == 0
    # One line, one return: shrunk toward the population rate (2 returns in 8 lines), never a confident 100%.
    assert X.loc["B", "return_rate_90d"] == pytest.approx((1 + 5 * 2 / 8) / (1 + 5))
    assert X.loc["C", "return_rate_90d"] == pytest.approx((0 + 5 * 2 / 8) / (6 + 5))


def test_wardrobing_needs_an_event_bracket_and_weighs_quick_returns_more():
    # 11.11 (Singles' Day) is a major CN event: ordered 3 days before it, sent back after it.
    orders = _orders([("O1", "A", "2023-11-08", "apparel", 80.0, "2023-11-10"),   # back 3 days after delivery
                      ("O2", "B", "2023-11-08", "apparel", 80.0, "2023-11-10"),   # back 10 days after delivery
                      ("O3", "C", "2023-10-01", "apparel", 80.0, "2023-10-02"),   # bought long before the event
                      ("O4", "D", "2023-11-08", "apparel", 80.0, "2023-11-10")])  # kept
    returns = _returns([("R1", "O1", "A", "2023-11-13", "changed_mind", 80.0, True),
                        ("R2", "O2", "B", "2023-11-20", "changed_mind", 80.0, True),
                        ("R3", "O3", "C", "2023-11-13", "changed_mind", 80.0, True)])
    X = account_features(orders, returns, None, "2023-11-30", market="CN")
    w = X["wardrobe_returns_730d"]
    assert w["A"] > w["B"] > 0 and w["C"] == 0 and w["D"] == 0
    assert X.loc[["A", "B", "D"], "event_lines_730d"].eq(1).all()


def test_not_received_claims_are_checked_against_the_delivery_record():
    orders = _orders([("O1", "A", "2023-05-01", "home", 10.0, "2023-05-03"),
                      ("O2", "B", "2023-05-01", "home", 10.0, None)])
    returns = _returns([("R1", "O1", "A", "2023-05-10", "not_received", 10.0, False),
                        ("R2", "O2", "B", "2023-05-10", "not_received", 10.0, False)])
    X = account_features(orders, returns, None, "2023-06-01")
    assert X.loc["A", "claims_on_delivered_365d"] == 1 and X.loc["B", "claims_on_delivered_365d"] == 0
    assert X.loc["A", "lines_delivered_365d"] == 1 and X.loc["B", "lines_delivered_365d"] == 0


def test_link_groups_and_hubs():
    accounts = [f"A{i}" for i in range(30)]
    orders = _orders([(f"O{i}", a, "2023-05-01", "home", 10.0, "2023-05-03") for i, a in enumerate(accounts)])
    returns = _returns([(f"R{i}", f"O{i}", accounts[i], "2023-05-10", "changed_mind", 10.0, True) for i in range(5)])
    links = _links(
        [(a, "device", "ring-dev") for a in accounts[:5]] + [(a, "payment", "ring-card") for a in accounts[:5]]
        + [("A10", "address", "home-1"), ("A11", "address", "home-1")]  # a household: one shared identifier
        + [(a, "device", "public-pc") for a in accounts[5:30]])  # a hub shared by 25 accounts: ignored
    X = account_features(orders, returns, links, "2023-06-01")
    ring = X.loc[accounts[:5]]
    assert (ring["link_group_size"] == 5).all() and (ring["link_strong_group_size"] == 5).all()
    assert (ring["link_max_shared_types"] == 2).all()
    assert (ring["link_group_returns_90d"] == 4).all()  # the other four members' returns
    assert X.loc["A10", "link_group_size"] == 2 and X.loc["A10", "link_strong_group_size"] == 1
    assert X.loc["A20", "link_group_size"] == 1  # the public PC joins nobody
    pairs = link_pairs(links, X.index)
    assert len(pairs) == 10 + 1


def test_ring_members_surface_through_link_features(account_world, feats):
    ds, truth = account_world
    ring = truth.index[(truth["pattern"] == "ring") & (truth["abuse_start"] <= AS_OF)]
    ring = ring[ring.isin(feats.index)]
    assert len(ring) >= 8
    no_links = account_features(ds.orders, ds.returns, None, AS_OF, market="CN")
    det = PatternDetector().fit(feats)
    with_links, ring_tail = det.score(feats), det.tails(feats)["ring"]
    without = PatternDetector().fit(no_links).score(no_links)
    pct_with = pd.Series(with_links, index=feats.index).rank(pct=True)[ring]
    pct_without = pd.Series(without, index=no_links.index).rank(pct=True)[ring]
    # Each member looks mild alone; the ring detector puts the members of abnormal groups in the population's top.
    assert ring_tail.rank(pct=True)[ring].median() > 0.95
    assert ring_tail[ring].median() > ring_tail.drop(ring).quantile(0.95)
    assert PatternDetector().fit(no_links).tails(no_links)["ring"].eq(0).all()  # no links, no ring
    assert pct_with.median() > pct_without.median() + 0.05


def test_ring_null_is_fitted_on_the_linked_accounts_body(account_world, feats):
    """The ring tests' null leaves out the highest group rates (the rings themselves, written on every member's row):
    fitted with them, it is wide enough to call rings ordinary. Single-account patterns keep their whole population."""
    _, truth = account_world
    ring = truth.index[(truth["pattern"] == "ring") & (truth["abuse_start"] <= AS_OF)]
    ring = ring[ring.isin(feats.index)]
    linked = feats.index[(feats["link_group_size"] > 1).to_numpy()].difference(truth.index[truth["is_abuser"]])
    trimmed = PatternDetector().fit(feats)
    whole = PatternDetector(pattern_trim={}).fit(feats)
    for key in trimmed.priors_:  # the rings' high rates are out of the null: its rates are no higher
        if key[0].startswith("ring_"):
            assert trimmed.rates_[key] <= whole.rates_[key]
        else:
            assert trimmed.priors_[key] == whole.priors_[key]
    t_trim, t_whole = trimmed.tails(feats), whole.tails(feats)
    assert t_trim["ring"][ring].median() > t_whole["ring"][ring].median()
    # Ordinary linked accounts stay ordinary, and the other patterns' tails are untouched.
    assert (t_trim["ring"][linked] >= 1.0).mean() < 0.10
    for p in ("serial", "wardrobing", "refund_without_return"):
        assert np.allclose(t_trim[p], t_whole[p])


# --------------------------------------------------------------------------------------------------------------------
# Reasons


def test_reasons_mention_the_accounts_numbers():
    rng = np.random.default_rng(0)
    accounts = [f"A{i:03d}" for i in range(300)]
    orders, returns = [], []
    for i, a in enumerate(accounts):
        n_orders = 20 if a == "A000" else int(rng.integers(2, 6))
        for j in range(n_orders):
            orders.append((f"O{i}-{j}", a, f"2023-05-{1 + j % 28:02d}", "home", 20.0, f"2023-05-{2 + j % 27:02d}"))
        n_ret = 14 if a == "A000" else int(rng.random() < 0.3)
        for j in range(n_ret):
            returns.append((f"R{i}-{j}", f"O{i}-{j}", a, "2023-05-30", "changed_mind", 20.0, True))
    X = account_features(_orders(orders), _returns(returns), None, "2023-06-01")
    model = SerialReturnerModel().fit(X)
    why = model.explain(X.loc[["A000"]])
    text = why.loc["A000", "reasons"]
    assert "14 returns in 30 days" in text
    assert "x the typical account" in text
    assert why.loc["A000", "likely_pattern"] == "serial"
    queue = review_queue(X, model, 5)
    assert queue.iloc[0]["account_id"] == "A000"
    assert queue.iloc[0]["reasons"] == text


# --------------------------------------------------------------------------------------------------------------------
# Model contract and modes


def test_model_contract_and_modes(feats, account_world):
    _, truth = account_world
    with pytest.raises(RuntimeError, match="not fitted"):
        SerialReturnerModel().predict(feats)
    cold = SerialReturnerModel()
    assert cold.fit(feats) is cold and cold.mode_ == "cold_start" and not hasattr(SerialReturnerModel(), "mode_")
    tr = truth.reindex(feats.index)
    abuser = (tr["is_abuser"] & (tr["abuse_start"] <= AS_OF)).to_numpy()
    scores = cold.predict(feats)
    labelled = np.r_[np.argsort(-scores)[:40], np.where(~abuser)[0][:40]]
    y = np.r_[np.full(len(feats), np.nan), abuser[labelled].astype(float)]
    X = pd.concat([feats, feats.iloc[labelled]])
    few = SerialReturnerModel(min_labels=1000).fit(X, y)
    assert few.mode_ == "cold_start"
    gated = SerialReturnerModel().fit(X, y)
    g = gated.gate_
    assert g["heldout_decisions"] >= 10
    # The supervised model is used only when it beats the cold start on held-out decisions.
    assert (gated.mode_ == "supervised") == (g["auc_supervised"] > g["auc_cold_start"])
    assert (gated.booster_ is None) == (gated.mode_ == "cold_start")
    sup = SerialReturnerModel(gate=False).fit(X, y)
    assert sup.mode_ == "supervised" and sup.n_labels_ == 80
    p = sup.predict(feats)
    assert ((p >= 0) & (p <= 1)).all()
    assert p[abuser].mean() > 2 * p[~abuser].mean()
    contrib = sup.contributions(feats.iloc[:5])
    assert list(contrib.columns) == list(FEATURES)
    snap = score_snapshot(feats, sup, scores=p)
    assert snap.columns.tolist()[:5] == ["account_id", "abuse_score", "abuse_percentile", "likely_pattern",
                                         "top_reason"]
    assert {"returns_30d", "return_rate_90d", "refund_without_return_90d", "link_group_size"} <= set(snap.columns)
    assert snap["top_reason"].str.len().gt(0).sum() >= 0.09 * len(snap)  # reasons for the top 10%


def test_queue_reserves_slots_per_pattern_and_excludes(feats):
    model = SerialReturnerModel().fit(feats)
    queue = review_queue(feats, model, 40, pattern_share=0.1, explore_share=0.1)
    assert len(queue) == 40 and queue["rank"].tolist() == list(range(1, 41))
    assert queue["score"].is_monotonic_decreasing
    assert (queue["slot"] == "exploration").sum() == 4
    # Every pattern with an account whose evidence reaches the reservation threshold is in the queue (on this
    # world no ring member's does: ring accounts reach the queue by score, when they do).
    from features.accounts import PATTERN_MIN_EVIDENCE

    why = model.explain(feats)
    strong = set(why.loc[why["pattern_evidence"] >= PATTERN_MIN_EVIDENCE, "likely_pattern"])
    assert len(strong) >= 3 and strong <= set(queue["likely_pattern"])
    again = review_queue(feats, model, 40, exclude=set(queue["account_id"][:10]))
    assert not set(again["account_id"]) & set(queue["account_id"][:10])
    with pytest.raises(ValueError, match="capacity"):
        review_queue(feats, model, 0)


def test_detector_adds_the_patterns_evidence_up(feats, account_world):
    _, truth = account_world
    det = PatternDetector().fit(feats)
    tails = det.tails(feats)
    score = det.score(feats)
    # One pattern far out ranks high whatever the others say; moderate evidence of two patterns adds up.
    assert np.allclose(score, tails.to_numpy().sum(axis=1))
    from features.accounts import combined_score

    toy = combined_score(np.array([[3.0, 0, 0, 0], [1.6, 1.6, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 0]]))
    assert list(np.argsort(-toy)) == [1, 0, 2, 3]
    # On the world: the abusers' median score is far above the others', and a queue of K = abusers is more precise
    # than the return-rate rule's (returns + 1) / (lines + 10).
    tr = truth.reindex(feats.index)
    abuser = (tr["is_abuser"] & (tr["abuse_start"] <= AS_OF)).fillna(False).to_numpy(dtype=bool)
    assert np.median(score[abuser]) > 5 * max(np.median(score[~abuser]), 0.1)
    k = int(abuser.sum())
    rule = (feats["returns_365d"].to_numpy() + 1) / (feats["lines_365d"].to_numpy() + 10)
    precision = abuser[np.argsort(-score, kind="stable")[:k]].mean()
    assert precision > abuser[np.argsort(-rule, kind="stable")[:k]].mean(), precision


def test_change_of_mind_returns_weigh_more_than_size_and_defect_returns():
    # Two accounts with the same orders and the same number of returns: one sends back what it changed its mind
    # about, the other what did not fit or was faulty (an honest heavy returner). The serial test ranks the first
    # higher, and its reason says how many returns were a change of mind.
    rng = np.random.default_rng(1)
    accounts = [f"A{i:03d}" for i in range(400)]
    reasons = ("size_fit", "defective", "changed_mind")
    orders, returns = [], []
    for i, a in enumerate(accounts):
        n_orders = 20 if a in ("A000", "A001") else int(rng.integers(3, 8))
        for j in range(n_orders):
            orders.append((f"O{i}-{j}", a, f"2023-05-{1 + j % 28:02d}", "apparel", 20.0, f"2023-05-{2 + j % 27:02d}"))
        n_ret = 8 if a in ("A000", "A001") else int(rng.integers(0, 3))
        for j in range(n_ret):
            why = "changed_mind" if a == "A000" else (reasons[j % 2] if a == "A001" else reasons[int(rng.integers(3))])
            returns.append((f"R{i}-{j}", f"O{i}-{j}", a, "2023-05-30", why, 20.0, True))
    X = account_features(_orders(orders), _returns(returns), None, "2023-06-01")
    model = SerialReturnerModel().fit(X)
    tails = model.detector_.tails(X)
    assert tails.loc["A000", "serial"] > tails.loc["A001", "serial"] + 1.0
    assert model.predict(X.loc[["A000"]])[0] > model.predict(X.loc[["A001"]])[0]
    text = model.explain(X.loc[["A000"]]).loc["A000", "reasons"]
    assert "8 of the returns for a change of mind" in text, text


def test_pattern_slots_go_only_to_accounts_with_strong_evidence(feats):
    # A reserved slot is filled only by an account whose evidence of its likely pattern reaches the threshold; the
    # slots nobody qualifies for go back to the top scores.
    model = SerialReturnerModel().fit(feats)
    loose = review_queue(feats, model, 40, pattern_share=0.2, pattern_min_evidence=0.0)
    assert (loose["slot"] == "pattern coverage").any()
    strict = review_queue(feats, model, 40, pattern_share=0.2, pattern_min_evidence=np.inf)
    assert (strict["slot"] == "top score").all()
    assert strict["account_id"].tolist() == review_queue(feats, model, 40, pattern_share=0.0)["account_id"].tolist()
    why = model.explain(feats.loc[loose["account_id"][loose["slot"] == "pattern coverage"]])
    mid = review_queue(feats, model, 40, pattern_share=0.2, pattern_min_evidence=3.0)
    cov = mid["account_id"][mid["slot"] == "pattern coverage"]
    assert (model.explain(feats.loc[cov])["pattern_evidence"] >= 3.0).all()
    assert len(why) >= len(cov)


def test_gate_is_cross_validated_and_follows_what_the_decisions_say(feats):
    # Decisions that the detector's own score separates perfectly: the supervised model cannot beat it, cold start.
    cold = SerialReturnerModel().fit(feats)
    score = cold.detector_.score(feats)
    rng = np.random.default_rng(3)
    picked = rng.choice(len(feats), 120, replace=False)
    by_score = (score[picked] > np.median(score[picked])).astype(float)
    X = pd.concat([feats, feats.iloc[picked]])
    m = SerialReturnerModel().fit(X, np.r_[np.full(len(feats), np.nan), by_score])
    assert m.gate_["folds"] == 3 * 5 and m.gate_["heldout_decisions"] == 120
    assert m.gate_["auc_cold_start"] == 1.0 and m.mode_ == "cold_start"
    # Decisions that follow something the detector does not test (spend): the boosted learner (every feature)
    # learns it, and the held-out folds choose it.
    spend = feats["spend_365d"].to_numpy()[picked]
    by_spend = (spend > np.median(spend)).astype(float)
    m = SerialReturnerModel(learner="boost").fit(X, np.r_[np.full(len(feats), np.nan), by_spend])
    assert m.gate_["auc_supervised"] > m.gate_["auc_cold_start"] + 0.2
    assert m.mode_ == "supervised" and m.gate_["folds_won"] >= 12


def test_supervised_model_learns_which_patterns_the_reviewers_confirm(feats):
    # Reviewers work down the top of the cold queue and confirm the accounts whose evidence is mostly of one pattern
    # (here: wardrobing and refunds without the item), clearing the heavy returners (serial evidence). The default
    # learner, a logistic regression on the detector's per-pattern evidence, learns that weighting from 120
    # decisions, the held-out folds choose it, and on the accounts nobody reviewed it ranks the confirmed kind above
    # the cleared kind better than the cold start, which adds all evidence up.
    from sklearn.metrics import roc_auc_score

    from features.account_model import LOGISTIC_COLUMNS

    cold = SerialReturnerModel().fit(feats)
    tails = cold.detector_.tails(feats)
    score = tails.to_numpy().sum(axis=1)
    kind = (tails["wardrobing"] + tails["refund_without_return"] > tails["serial"]).to_numpy()
    order = np.argsort(-score, kind="stable")
    top = order[:120]
    X = pd.concat([feats, feats.iloc[top]])
    m = SerialReturnerModel().fit(X, np.r_[np.full(len(feats), np.nan), kind[top].astype(float)])
    assert m.learner == "logistic" and m.mode_ == "supervised"
    assert m.gate_["auc_supervised"] > m.gate_["auc_cold_start"] + 0.1
    coef = dict(zip(LOGISTIC_COLUMNS, m.booster_.coef_[0], strict=True))
    # The evidence the reviewers clear counts for nothing: a weight is held at 0, never below (more evidence of a
    # pattern never makes an account less suspicious).
    assert coef["tail_wardrobing"] > 0 and coef["tail_refund_without_return"] > 0 and coef["tail_serial"] == 0
    rest = order[120:600][score[order[120:600]] > 0]  # the next accounts of the cold queue, not reviewed
    assert len(rest) >= 30 and 0 < kind[rest].sum() < len(rest)
    p = m.predict(feats.iloc[rest])
    assert roc_auc_score(kind[rest], p) > roc_auc_score(kind[rest], score[rest]) + 0.1
    # Reasons: each evidence column's weighted push, spread over that pattern's features, adds up to the logit.
    D = m._design(feats.iloc[rest[:20]])
    raw = m._raw(D, m.prior_, m.booster_)
    contrib = m.contributions(feats.iloc[rest[:20]])
    assert np.allclose(contrib.sum(axis=1).to_numpy(), raw - m.booster_.intercept_)
    # The model card says what the score is: the regression, its weights per pattern and the gate's figures.
    from training.serial_returners import learner_text

    text = learner_text(m)
    assert "logistic regression on the detector's evidence per pattern" in text
    assert f"wardrobing {coef['tail_wardrobing']:+.2f}" in text and "held-out decisions" in text
    assert "added up" in learner_text(cold)
    with pytest.raises(ValueError, match="unknown learner"):
        SerialReturnerModel(learner="forest")


def test_cold_start_scored_later_weighs_evidence_against_that_days_accounts(feats):
    # A cold start fitted on an earlier population (here: a tenth of the accounts, whose null differs) and scored
    # on a later day's accounts: on_population refits the null on those accounts, so its scores are those of a
    # cold start fitted on them; the fitted model is left as it was, and a supervised model is kept as it is.
    early = feats.iloc[::10]
    m = SerialReturnerModel().fit(early)
    before = m.predict(feats)
    later = m.on_population(feats)
    assert later is not m and later.mode_ == "cold_start"
    assert np.allclose(later.predict(feats), SerialReturnerModel().fit(feats).predict(feats))
    assert not np.allclose(later.predict(feats), before)
    assert np.allclose(m.predict(feats), before)
    cold = SerialReturnerModel().fit(feats)
    top = np.argsort(-cold.predict(feats), kind="stable")[:120]
    rng = np.random.default_rng(0)
    y = rng.random(120) < 0.6
    sup = SerialReturnerModel(gate=False).fit(pd.concat([feats, feats.iloc[top]]),
                                              np.r_[np.full(len(feats), np.nan), y.astype(float)])
    assert sup.mode_ == "supervised" and sup.on_population(early) is sup


def test_served_snapshot_scores_a_later_day_as_flag_accounts_does(feats, tmp_path):
    # refresh-features writes the served accounts snapshot with a champion fitted on an earlier day: the snapshot
    # must score the day's accounts as `flag-accounts` does (the null refitted on that day's accounts, for_day), or
    # the served queue and the command's queue of the same day would disagree.
    from features.settings import Settings
    from training.serial_returners import write_snapshots

    m = SerialReturnerModel().fit(feats.iloc[::10])
    m.as_of_ = "2023-03-31"  # fitted half a year before feats' day
    assert m.for_day(feats) is not m
    expected = m.on_population(feats).predict(feats)
    write_snapshots(feats, m, Settings(), out=tmp_path)
    snap = pd.read_parquet(tmp_path / "accounts.parquet").set_index("account_id")
    got = snap.loc[feats.index.astype("string"), "abuse_score"].to_numpy()
    assert np.allclose(got, np.round(expected, 6), atol=1e-6)
    assert not np.allclose(got, np.round(m.predict(feats), 6), atol=1e-6)
    m.as_of_ = feats.attrs["as_of"]  # fitted on the day itself (training's own snapshots): scored as it is
    assert m.for_day(feats) is m


def test_decisions_speak_for_the_decided_accounts_linked_accounts(feats):
    # Reviewers confirm rings: accounts that share a device with other confirmed accounts. Given the account links,
    # the logistic learner counts each account's confirmed and cleared linked accounts (never its own decision),
    # learns from the decisions how much a confirmed link counts, and ranks the unreviewed accounts linked to a
    # confirmed one higher than the same model without the links does.
    cold = SerialReturnerModel().fit(feats)
    order = np.argsort(-cold.predict(feats), kind="stable")
    ids = feats.index.astype(str)
    top = order[:120]
    rng = np.random.default_rng(0)
    y = (rng.random(120) < 0.5).astype(float)
    conf, clr = top[y == 1], top[y == 0]
    # Confirmed accounts share devices in pairs; each cleared one shares an address with one ordinary account; ten
    # unreviewed accounts low in the cold ranking share a device with a confirmed account.
    quiet = order[-10:]
    rows = [(ids[conf[i]], "device", f"dev{i // 2}") for i in range(len(conf) - len(conf) % 2)]
    rows += [(ids[a], "address", f"adr{i}") for i, a in enumerate(clr)]
    rows += [(ids[a], "address", f"adr{i}") for i, a in enumerate(order[200:200 + len(clr)])]
    rows += [(ids[a], "device", f"q{i}") for i, a in enumerate(quiet)]
    rows += [(ids[conf[i]], "device", f"q{i}") for i in range(10)]
    links = pd.DataFrame(rows, columns=["account_id", "link_type", "link_value"])
    X = pd.concat([feats, feats.iloc[top]])
    labels = np.r_[np.full(len(feats), np.nan), y]
    plain = SerialReturnerModel(gate=False).fit(X, labels)
    linked = SerialReturnerModel(gate=False).fit(X, labels, links=links)
    assert plain.decision_links_ is None and plain.logistic_columns_ == LOGISTIC_COLUMNS
    assert linked.logistic_columns_[-2:] == DECISION_LINK_COLUMNS
    counts = linked.decision_links_.reindex(ids, fill_value=0.0)
    assert counts.loc[ids[quiet[0]], "linked_confirmed"] == 1 and counts.loc[ids[quiet[0]], "linked_cleared"] == 0
    assert counts.loc[ids[clr[0]], "linked_confirmed"] == 0 and counts.loc[ids[clr[0]], "linked_cleared"] == 0
    coef = dict(zip(linked.logistic_columns_, linked.booster_.coef_[0], strict=True))
    assert coef["linked_confirmed"] > 0
    rank = pd.Series(linked.predict(feats)).rank(ascending=False).to_numpy()
    rank_plain = pd.Series(plain.predict(feats)).rank(ascending=False).to_numpy()
    assert (rank[quiet] < rank_plain[quiet]).all()
    # Reasons: the decision-link terms go to the ring's features and still add up to the logit.
    D = linked._design(feats.iloc[quiet])
    contrib = linked.contributions(feats.iloc[quiet])
    raw = linked._raw(D, linked.prior_, linked.booster_)
    assert np.allclose(contrib.sum(axis=1).to_numpy(), raw - linked.booster_.intercept_)
    assert "linked_confirmed" in learner_text(linked)
    # The reviewer reads why: the confirmed linked account is the first reason.
    why = linked.explain(feats.iloc[quiet])
    assert why["top_reason"].str.contains("1 account the reviewers confirmed").all()
    assert not plain.explain(feats.iloc[quiet])["reasons"].str.contains("reviewers confirmed").any()


def test_logistic_weights_keep_their_sign_whatever_a_biased_sample_says(feats):
    # Reviewers confirm accounts that each share an address with an account they cleared (a ring whose other members
    # had not started yet when reviewed): in the decisions, a cleared linked account goes with confirmation. An
    # unconstrained regression learns a positive weight for it and would push every cleared account's innocent
    # neighbours up the next queue; the learner holds that weight at or below 0, the evidence weights at or above 0.
    from sklearn.linear_model import LogisticRegression

    from features.account_model import NEGATIVE_WEIGHT_COLUMNS, _fit_logistic

    cold = SerialReturnerModel().fit(feats)
    order = np.argsort(-cold.predict(feats), kind="stable")
    ids = feats.index.astype(str)
    top = order[:120]
    y = (np.arange(120) % 2 == 0).astype(float)
    conf, clr = top[y == 1], top[y == 0]
    neighbours = order[-len(conf):]  # unreviewed accounts at the bottom of the cold ranking
    rows = [(ids[a], "address", f"adr{i}") for i, a in enumerate(conf)]
    rows += [(ids[a], "address", f"adr{i}") for i, a in enumerate(clr)]
    rows += [(ids[a], "device", f"dev{i}") for i, a in enumerate(clr)]
    rows += [(ids[a], "device", f"dev{i}") for i, a in enumerate(neighbours)]
    links = pd.DataFrame(rows, columns=["account_id", "link_type", "link_value"])
    X = pd.concat([feats, feats.iloc[top]])
    m = SerialReturnerModel(gate=False).fit(X, np.r_[np.full(len(feats), np.nan), y], links=links)
    D = m._design(feats.iloc[top])
    assert D["linked_cleared"].to_numpy()[y == 1].mean() > D["linked_cleared"].to_numpy()[y == 0].mean()
    cols = list(m.logistic_columns_)
    Z = D[cols].to_numpy()
    free = LogisticRegression(C=m.logistic_c, max_iter=2000).fit((Z - Z.mean(0)) / Z.std(0).clip(1e-9), y)
    assert dict(zip(cols, free.coef_[0], strict=True))["linked_cleared"] > 0  # what the sample alone says
    coef = dict(zip(cols, m.booster_.coef_[0], strict=True))
    assert NEGATIVE_WEIGHT_COLUMNS == ("linked_cleared",) and coef["linked_cleared"] <= 0
    assert all(w >= 0 for c, w in coef.items() if c not in NEGATIVE_WEIGHT_COLUMNS)
    # So a cleared account's neighbours score no higher than the same accounts without that link.
    unlinked = SerialReturnerModel(gate=False).fit(X, np.r_[np.full(len(feats), np.nan), y],
                                                   links=links[~links["link_value"].str.startswith("dev")])
    assert (m.predict(feats.iloc[neighbours]) <= unlinked.predict(feats.iloc[neighbours]) + 1e-12).all()
    # Without bounds to hold, the fit is scikit-learn's L2 logistic regression (same penalty, intercept free).
    Zw = D[["tail_wardrobing", "anomaly_score"]].to_numpy()
    both = ((Zw - Zw.mean(0)) / Zw.std(0)).sum(axis=1)
    yw = ((both > np.median(both)) ^ (np.random.default_rng(0).random(len(Zw)) < 0.2)).astype(float)
    lr = _fit_logistic(D, yw, 0.1, ("tail_wardrobing", "anomaly_score"))
    ref = LogisticRegression(C=0.1, max_iter=2000).fit((Zw - Zw.mean(0)) / Zw.std(0), yw)
    assert (ref.coef_[0] > 0).all()  # inside the bounds: nothing to hold
    assert np.allclose(lr.coef_[0], ref.coef_[0], atol=1e-3) and abs(lr.intercept_ - ref.intercept_[0]) < 1e-3


def test_wardrobing_reads_two_seasons_and_the_delivery_record_one_year():
    """Wardrobing events come once a year each: last season's bracketed return still counts (WARDROBE_WINDOW_DAYS),
    the season before it does not, and the 365-day features keep their window."""
    from features.account_features import WARDROBE_WINDOW_DAYS

    assert 365 < WARDROBE_WINDOW_DAYS < 800
    orders = _orders([("O1", "A", "2023-11-08", "apparel", 80.0, "2023-11-10"),   # last season: ~414 days back
                      ("O2", "B", "2022-11-08", "apparel", 80.0, "2022-11-10"),   # the season before: ~779 days
                      ("O3", "A", "2023-09-01", "home", 10.0, "2023-09-03"),
                      ("O4", "C", "2024-11-08", "apparel", 80.0, "2024-11-10")])  # this season
    returns = _returns([("R1", "O1", "A", "2023-11-13", "changed_mind", 80.0, True),
                        ("R2", "O2", "B", "2022-11-13", "changed_mind", 80.0, True),
                        ("R3", "O3", "A", "2023-09-20", "not_received", 10.0, False),
                        ("R4", "O4", "C", "2024-11-13", "changed_mind", 80.0, True)])
    X = account_features(orders, returns, None, "2024-12-31", market="CN")
    w = X["wardrobe_returns_730d"]
    assert w["A"] > 0 and w["C"] > 0 and w["B"] == 0
    assert X.loc["A", "returns_730d"] == 2 and X.loc["A", "returns_365d"] == 0
    assert X.loc["A", "event_lines_730d"] == 1 and X.loc["B", "event_lines_730d"] == 0
    assert X.loc["A", "wardrobe_share"] == pytest.approx(w["A"] / 2)
    # The delivery record stays a year's: A's 'not received' claim on a delivered parcel is older than that.
    assert X.loc["A", "claims_on_delivered_365d"] == 0 and X.loc["A", "no_item_on_delivered_365d"] == 0
