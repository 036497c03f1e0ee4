"""Ticket features and the fitted TicketTriageModel: point in time, no future data, serving paths agree."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.calendar import calendar_features
from features.contract import load_dataset
from features.settings import Settings
from features.tickets import (
    ACCOUNT_FEATURES,
    CALENDAR_FEATURES,
    FEATURES,
    NEW_ACCOUNT,
    SNAPSHOT_FILES,
    CalendarTable,
    TextScorer,
    TicketTriageModel,
    assemble_one,
    build_training_features,
    feature_snapshots,
    latest_before,
    load_serving_snapshots,
    order_table,
    out_of_fold_text_scores,
    text_features,
    text_grams,
    triage_batch,
    triage_one,
    window_sum,
)

WORLD = dict(seed=11, accounts=2000, merchants=60, start="2023-06-01", days=400, market="CN", progress=False)
CAL = CalendarTable("CN", first_year=2023, last_year=2025)  # a short table; other days are computed on demand
AS_OF = pd.Timestamp("2024-04-15", tz="UTC")  # snapshot time for the serving tests: score tickets after it


@pytest.fixture(scope="session")
def world(world_factory) -> Path:
    return world_factory(**WORLD)


@pytest.fixture(scope="session")
def ds(world):
    return load_dataset(world)


@pytest.fixture(scope="session")
def feats(ds):
    return build_training_features(ds, CAL)


@pytest.fixture(scope="session")
def model(feats) -> TicketTriageModel:
    meta = feats.meta
    lab = (meta["escalated"].notna() & (meta["created_at"] < AS_OF)).to_numpy()
    y = meta["escalated"].astype("boolean").fillna(False).to_numpy(dtype=float)
    return TicketTriageModel(num_threads=1, num_boost_round=200).fit(feats.X[lab], y[lab])


@pytest.fixture(scope="session")
def snapshots(ds, tmp_path_factory):
    """Snapshot files as of AS_OF, plus an accounts.parquet from 'another model' with a clashing column."""
    d = tmp_path_factory.mktemp("snapshots")
    snaps = feature_snapshots(ds, AS_OF)
    for name, frame in snaps.items():
        frame.to_parquet(d / SNAPSHOT_FILES[name], index=False)
    acc = pd.concat([snaps["accounts"][["account_id"]], pd.DataFrame({"account_id": ["A-ONLY-THEIRS"]})],
                    ignore_index=True)
    acc["abuse_score"] = np.linspace(0.0, 1.0, len(acc))
    acc["returns_30d"] = -99.0  # a different definition elsewhere must not reach the model
    acc.to_parquet(d / "accounts.parquet", index=False)
    mer = snaps["merchants"][["merchant_id"]].copy()
    mer["merchant_risk_percentile"] = np.linspace(0.0, 1.0, len(mer))
    mer["late_delivery_rate"] = -7.0  # the merchant model's own (shrunk) rate: what the merchant ranking shows
    mer.to_parquet(d / "merchants.parquet", index=False)
    return d, load_serving_snapshots(d)


# ---- point in time, by hand ------------------------------------------------------------------------------------


def _write(folder: Path, name: str, rows: list[dict]) -> None:
    pd.DataFrame(rows).to_csv(folder / f"{name}.csv", index=False)


@pytest.fixture()
def tiny(tmp_path) -> Path:
    o = dict(quantity=1, amount=40.0, line_no=1, merchant_id="M1")
    _write(tmp_path, "orders", [
        dict(order_id="O3", account_id="A2", ordered_at="2024-01-01T10:00:00Z",
             promised_delivery_at="2024-01-04T00:00:00Z", delivered_at="2024-01-03T00:00:00Z", **o),
        dict(order_id="O1", account_id="A1", ordered_at="2024-03-01T10:00:00Z",
             promised_delivery_at="2024-03-05T00:00:00Z", delivered_at="2024-03-08T12:00:00Z", **o),
        dict(order_id="O2", account_id="A1", ordered_at="2024-03-10T10:00:00Z",
             promised_delivery_at="2024-03-14T00:00:00Z", delivered_at="", **o),
    ])
    r = dict(account_id="A1", merchant_id="M1", quantity=1, refund_amount=40.0)
    _write(tmp_path, "returns", [
        dict(return_id="R1", order_id="O1", requested_at="2024-03-09T00:00:00Z", reason="defective",
             item_returned="false", **r),
        dict(return_id="R2", order_id="O1", requested_at="2024-03-20T00:00:00Z", reason="not_as_described",
             item_returned="true", **r),
    ])
    t = dict(merchant_id="M1", channel="chat", amount=40.0, text="Where is my parcel?")
    _write(tmp_path, "tickets", [
        dict(ticket_id="T1", created_at="2024-03-07T10:00:00Z", account_id="A1", order_id="O1", case_type="logistics",
             escalated="false", resolved_at="2024-03-07T20:00:00Z", **t),
        dict(ticket_id="T2", created_at="2024-03-12T10:00:00Z", account_id="A1", order_id="O1", case_type="refund",
             escalated="false", resolved_at="2024-03-12T20:00:00Z", **t),
        dict(ticket_id="T3", created_at="2024-03-15T10:00:00Z", account_id="", order_id="", case_type="complaint",
             escalated="true", resolved_at="2024-03-16T10:00:00Z", **t),
        dict(ticket_id="T4", created_at="2024-03-20T10:00:00Z", account_id="A2", order_id="O3", case_type="other",
             escalated="", resolved_at="", **t),
    ])
    return tmp_path


def test_point_in_time_values_by_hand(tiny):
    f = build_training_features(load_dataset(tiny), CAL)
    X = f.X.set_index(f.meta["ticket_id"].to_numpy())
    # T1: parcel promised 03-05, not delivered when the ticket opens on 03-07 10:00 -> 2 days 10 h late so far.
    assert X.loc["T1", "delivered_by_creation"] == 0.0
    assert X.loc["T1", "lateness_days"] == pytest.approx(2 + 10 / 24)
    assert math.isnan(X.loc["T1", "return_reason"]) and X.loc["T1", "prior_tickets_30d"] == 0.0
    # T2: delivered 3.5 days late; return R1 (defective, 3 days 10 h before) visible, R2 (later) not.
    assert X.loc["T2", "delivered_by_creation"] == 1.0 and X.loc["T2", "lateness_days"] == pytest.approx(3.5)
    assert X.loc["T2", "return_reason"] == 0.0  # defective
    assert X.loc["T2", "days_since_return"] == pytest.approx(3 + 10 / 24)
    assert X.loc["T2", "order_age_days"] == pytest.approx(11.0)
    assert X.loc["T2", "prior_tickets_30d"] == 1.0 and X.loc["T2", "returns_30d"] == 1.0
    assert X.loc["T2", "refund_without_return_90d"] == 1.0
    assert X.loc["T2", "return_rate_90d"] == pytest.approx(1 / 2)  # 1 return, 2 order lines (O1, O2)
    # Merchant at T2: promises due before 03-12: O3 on time, O1 late -> 1/2; no complaint known yet.
    assert X.loc["T2", "mer_late_delivery_rate"] == pytest.approx(0.5) and X.loc["T2", "mer_complaint_rate_90d"] == 0.0
    # T3 is a guest: no account history at all.
    assert all(math.isnan(X.loc["T3", c]) for c in ACCOUNT_FEATURES) and X.loc["T3", "has_order"] == 0.0
    # T4: O2's promise (03-14) has passed undelivered -> late 2/3; T3's complaint case is known -> 1 per 3 orders.
    assert X.loc["T4", "mer_late_delivery_rate"] == pytest.approx(2 / 3)
    assert X.loc["T4", "mer_complaint_rate_90d"] == pytest.approx(1 / 3)


def test_window_sum_counts_strictly_before_the_query():
    ev_key = np.array([0, 0, 0, 1])
    ev_t = np.array([10.0, 20.0, 30.0, 20.0]) * 86_400e6
    q_key = np.array([0, 0, 1, -1])
    q_t = np.array([30.0, 45.0, 20.0, 30.0]) * 86_400e6
    got = window_sum(ev_key, ev_t, np.ones(4), q_key, q_t, window_days=20)
    # [10, 30) holds days 10 and 20; [25, 45) holds day 30; key 1's event at the query instant is excluded.
    assert got[:3].tolist() == [2.0, 1.0, 0.0] and math.isnan(got[3])


def test_window_sums_and_latest_event_equal_a_brute_force_count():
    """The sort-based look-ups against a plain loop: ties at the query instant and at the window's start, events and
    queries without a key, missing event times, queries before and after every event, two weight columns at once."""
    rng = np.random.default_rng(3)
    n, q, day = 3000, 800, 86_400e6
    ev_key, q_key = rng.integers(-1, 40, n), rng.integers(-1, 40, q)
    ev_t = rng.integers(0, 200, n) * day + rng.choice([0.0, 1.0, 0.5 * day], n)
    ev_t[::53] = np.nan
    q_t = rng.integers(-20, 230, q) * day
    q_t[:40] = np.nan_to_num(ev_t[:40], nan=5 * day)  # a query at an event's very instant
    q_t[40:80] = np.nan_to_num(ev_t[40:80], nan=5 * day) + 30 * day  # a window that starts at an event's instant
    q_t[80] = np.nan
    w = np.column_stack([np.ones(n), rng.integers(0, 2, n).astype(float)])
    got = window_sum(ev_key, ev_t, w, q_key, q_t, window_days=30)
    latest = latest_before(ev_key[~np.isnan(ev_t)], ev_t[~np.isnan(ev_t)], q_key, q_t)
    kept_key, kept_t = ev_key[~np.isnan(ev_t)], ev_t[~np.isnan(ev_t)]
    for i in range(q):
        if q_key[i] < 0:
            assert np.isnan(got[i]).all() and latest[i] == -1
            continue
        inside = (ev_key == q_key[i]) & (ev_t < q_t[i]) & (ev_t >= q_t[i] - 30 * day)
        assert got[i].tolist() == w[inside].sum(axis=0).tolist(), i
        assert window_sum(ev_key, ev_t, w[:, 1], q_key[i:i + 1], q_t[i:i + 1], 30)[0] == w[inside, 1].sum()
        seen = np.flatnonzero((kept_key == q_key[i]) & (kept_t <= q_t[i]))
        if np.isnan(q_t[i]):  # no time: the window is empty (the latest event is not defined)
            assert got[i].tolist() == [0.0, 0.0]
        elif len(seen) == 0:
            assert latest[i] == -1, i
        else:  # the latest such event (the last in input order among equal times)
            assert kept_t[latest[i]] == kept_t[seen].max() and kept_key[latest[i]] == q_key[i], i


def test_order_table_by_hand():
    t = pd.to_datetime(["2024-01-01", "2024-01-03", "2024-01-02", "2024-01-05", "2024-01-04"], utc=True)
    orders = pd.DataFrame({
        "order_id": pd.array(["B", "A", "B", "A", "C"], dtype="string"),
        "merchant_id": pd.array(["m2", "m1", "m9", "m1", "m3"], dtype="string"),
        "ordered_at": t,
        "promised_delivery_at": t + pd.Timedelta(days=3),
        "delivered_at": pd.Series([t[0] + pd.Timedelta(days=1), t[1], pd.NaT, t[3], pd.NaT], dtype=t.dtype),
    })
    ot = order_table(orders)
    assert ot.index.tolist() == ["B", "A", "C"]  # first appearance
    assert ot["merchant_id"].tolist() == ["m2", "m1", "m3"]  # the order's first line
    assert ot.loc["B", "ordered_at"] == t[0] and ot.loc["B", "promised_delivery_at"] == t[2] + pd.Timedelta(days=3)
    assert pd.isna(ot.loc["B", "delivered_at"])  # one of its lines is not delivered yet
    assert ot.loc["A", "delivered_at"] == t[3] and pd.isna(ot.loc["C", "delivered_at"])
    assert len(order_table(orders.iloc[:0])) == 0


def _truncate(ds, cut: pd.Timestamp):
    """The data folder as it looked at ``cut``: later rows gone, later deliveries and outcomes unknown."""
    o = ds.orders[ds.orders["ordered_at"] < cut].copy()
    o.loc[o["delivered_at"] >= cut, "delivered_at"] = pd.NaT
    r = ds.returns[ds.returns["requested_at"] < cut].copy()
    t = ds.tickets[ds.tickets["created_at"] < cut].copy()
    late = t["resolved_at"] >= cut
    t.loc[late, "resolved_at"] = pd.NaT
    t["escalated"] = t["escalated"].mask(late)
    return dataclasses.replace(ds, tables={**ds.tables, "orders": o, "returns": r, "tickets": t})


def test_features_do_not_change_when_later_data_is_removed(ds, feats):
    cut = pd.Timestamp("2024-02-10 12:00", tz="UTC")
    early = build_training_features(_truncate(ds, cut), CAL)
    full = feats.X[(feats.meta["created_at"] < cut).to_numpy()].reset_index(drop=True)
    assert len(early.X) == len(full) > 1000
    assert early.meta["ticket_id"].tolist() == feats.meta["ticket_id"][: len(full)].tolist()
    pd.testing.assert_frame_equal(early.X, full, check_exact=True)
    # ... and the test has teeth: the history columns do react to earlier data.
    ds_less = _truncate(ds, pd.Timestamp("2024-01-01", tz="UTC"))
    moved = build_training_features(dataclasses.replace(ds, tables={**ds.tables, "returns": ds_less.returns}), CAL)
    assert not np.allclose(moved.X["returns_30d"].fillna(-1), feats.X["returns_30d"].fillna(-1))


def test_text_features_are_stable_and_cheap():
    msg = "This is the third time I contact you! I will contact my lawyer."
    assert text_features(msg)[:2] == [float(len(msg)), 1.0] and math.isnan(text_features(msg)[2])
    assert text_grams(msg) == text_grams(msg.upper()) and len(text_grams(msg)) > 20
    assert text_grams(None) == [] and text_features(None)[:2] == [0.0, 0.0]


def test_text_scorer_learns_the_platforms_own_wording():
    """Words no list knows ("zut", "grrr") escalate on this made-up platform: the scorer learns them from the
    tickets, in bulk and one at a time alike, and out-of-fold scores never come from a scorer that saw the row."""
    rng = np.random.default_rng(0)
    base = np.array(["Ou est mon colis", "Je veux un remboursement", "Question sur la taille", "Article casse"])
    n = 4000
    text = base[rng.integers(0, 4, n)].astype(object)
    angry = rng.random(n) < 0.2
    text[angry] = text[angry] + np.where(rng.random(angry.sum()) < 0.5, " zut alors!!", " grrrr inadmissible")
    y = (rng.random(n) < np.where(angry, 0.6, 0.1)).astype(float)
    scorer = TextScorer().fit(pd.Series(text), y)
    calm, hot = scorer.score_one("Ou est mon colis"), scorer.score_one("Ou est mon colis zut alors!!")
    assert hot > calm + 1.0
    assert scorer.score_one("Ou est mon colis, zuuut") > calm  # a spelling it never saw shares character grams
    bulk = scorer.score(pd.Series([text[0], None, "grrrr"]))
    assert bulk[0] == scorer.score_one(text[0]) and bulk[1] == scorer.score_one(None)
    oof = out_of_fold_text_scores(pd.Series(text), y)
    assert np.corrcoef(oof, angry)[0, 1] > 0.8
    # Out of fold: flipping the labels of the first fifth leaves that fifth's scores unchanged.
    y2 = y.copy()
    y2[: n // 5] = 1 - y2[: n // 5]
    assert np.array_equal(out_of_fold_text_scores(pd.Series(text), y2)[: n // 5], oof[: n // 5])


def test_calendar_table_matches_calendar_features():
    days = pd.to_datetime(["2023-11-11", "2024-06-20", "2026-12-25"])  # the last one is outside the table
    expected = calendar_features(days, "CN", Settings(market="CN"))[list(CALENDAR_FEATURES)].to_numpy(float)
    day_idx = (days.values.astype("datetime64[D]").astype(np.int64))
    assert np.array_equal(CAL.days(day_idx), expected)
    assert [list(CAL.day(int(d))) for d in day_idx] == expected.tolist()


# ---- the fitted model ------------------------------------------------------------------------------------------


def test_model_follows_the_sklearn_contract(feats, model):
    with pytest.raises(RuntimeError, match="not fitted"):
        TicketTriageModel().predict(feats.X.head())
    assert "num_leaves" in vars(TicketTriageModel()) and not hasattr(TicketTriageModel(), "booster_")
    p = model.predict(feats.X.head(50))
    assert p.shape == (50,) and ((p >= 0) & (p <= 1)).all()
    assert np.allclose(model.predict_proba(feats.X.head(50)).sum(axis=1), 1.0)
    again = pickle.loads(pickle.dumps(model))
    assert np.array_equal(again.predict(feats.X.head(50)), p)
    with pytest.raises(ValueError, match="0/1 labels"):
        TicketTriageModel().fit(feats.X.head(500), np.full(500, np.nan))


def test_refit_booster_learns_the_later_slice_and_is_averaged_in(feats, model):
    """refit_all: a second booster, fitted on every row (the later slice the first one only validated on included)
    for the rounds early stopping chose, and the score is the mean of the two margins; without it, the first
    booster alone."""
    meta = feats.meta
    lab = (meta["escalated"].notna() & (meta["created_at"] < AS_OF)).to_numpy()
    X = model._matrix(feats.X[lab])
    full, first = model.booster_all_, model.booster_
    assert full.num_trees() == first.num_trees() == model.best_iteration_
    m_first = first.predict(X, raw_score=True)
    m_full = full.predict(X, raw_score=True)
    assert np.allclose(model.predict_margin(feats.X[lab]), 0.5 * (m_first + m_full))
    n_cal = model.n_calibration_
    y = meta["escalated"].astype("boolean").fillna(False).to_numpy(dtype=float)[lab]
    from sklearn.metrics import log_loss

    # the all-rows booster has learnt the later slice (lower loss there than the booster that only validated on it)
    sig = lambda m: 1 / (1 + np.exp(-m))  # noqa: E731
    assert log_loss(y[-n_cal:], sig(m_full[-n_cal:])) < log_loss(y[-n_cal:], sig(m_first[-n_cal:]))
    alone = TicketTriageModel(num_threads=1, num_boost_round=200, refit_all=False).fit(feats.X[lab], y)
    assert alone.booster_all_ is None
    assert np.allclose(alone.predict_margin(feats.X[lab]), alone.booster_.predict(X, raw_score=True))
    del alone.booster_all_  # a model pickled before refit_all existed: the first booster alone
    assert np.allclose(alone.predict_margin(feats.X[lab]), alone.booster_.predict(X, raw_score=True))


def _requests(ds, n: int = 400) -> pd.DataFrame:
    """Tickets after the snapshot, as the ticket system sends them, with guests and unknown IDs mixed in."""
    t = ds.tickets[ds.tickets["created_at"] >= AS_OF].drop(columns=["escalated", "resolved_at"])
    t = t.sample(min(n, len(t)), random_state=1).reset_index(drop=True)
    t["account_id"] = t["account_id"].astype("object")
    t["merchant_id"] = t["merchant_id"].astype("object")
    t["order_id"] = t["order_id"].astype("object")
    t.loc[0:9, "account_id"] = "A-NEW-CUSTOMER"
    t.loc[10:14, "merchant_id"] = "M-NEW-SHOP"
    t.loc[15:19, "order_id"] = "O-NOT-IN-SNAPSHOT"
    t.loc[20:24, "account_id"] = None
    t.loc[25, "prior_tickets_30d"] = 4.0  # the ticket system may send a fresher count
    return t


def _as_json(t: pd.DataFrame) -> list[dict]:
    recs = t.astype(object).where(t.notna(), None).to_dict("records")
    for r in recs:
        r["created_at"] = r["created_at"].isoformat()
        r.pop("prior_tickets_30d") if r.get("prior_tickets_30d") is None else None
    return recs


def test_score_one_equals_score_batch(ds, model, snapshots):
    _, snaps = snapshots
    t = _requests(ds)
    frames = snaps.frames()
    batch = model.score_batch(t, frames["accounts"], frames["merchants"], frames["orders"])
    ones = [model.score_one(r, snaps.accounts.get(r["account_id"]), snaps.merchants.get(r["merchant_id"]),
                            snaps.orders.get(r["order_id"])) for r in _as_json(t)]
    p1 = np.array([o["escalation_probability"] for o in ones])
    assert np.abs(p1 - batch["escalation_probability"].to_numpy()).max() <= 1e-9
    assert [o["reasons"] for o in ones] == batch["reasons"].tolist()
    for flag in ("guest", "unknown_account", "unknown_merchant", "order_context_missing"):
        assert [o[flag] for o in ones] == batch[flag].tolist()
    assert batch["escalation_probability"].nunique() > 5  # a spread, not a constant
    # Feature vectors agree too, NaN for NaN.
    X, _ = model.features_batch(t, frames["accounts"], frames["merchants"], frames["orders"])
    r0 = _as_json(t)[30]
    v = assemble_one(r0, snaps.orders.get(r0["order_id"]), snaps.accounts.get(r0["account_id"]),
                     snaps.merchants.get(r0["merchant_id"]), model.calendar_)
    v[FEATURES.index("text_score")] = model.text_scorer_.score_one(r0["text"])  # the model's own text score
    assert np.array_equal(np.array(v), X[30], equal_nan=True)


def test_unknown_ids_get_defaults_and_say_so(ds, model, snapshots):
    _, snaps = snapshots
    recs = _as_json(_requests(ds))
    new = model.score_one(recs[0], None, snaps.merchants.get(recs[0]["merchant_id"]),
                          snaps.orders.get(recs[0]["order_id"]))
    assert new["unknown_account"] and not new["guest"] and "new account" in new["defaults_used"][0]
    X, flags = model.features_batch(_requests(ds).head(30), *[snaps.frames()[k] for k in ("accounts", "merchants",
                                                                                           "orders")])
    acc_cols = [FEATURES.index(c) for c in ACCOUNT_FEATURES]
    assert (X[:10][:, acc_cols] == [NEW_ACCOUNT[c] for c in ACCOUNT_FEATURES]).all()
    assert flags["unknown_account"][:10].all() and flags["unknown_merchant"][10:15].all()
    assert flags["order_context_missing"][15:20].all() and flags["guest"][20:25].all()
    assert np.isnan(X[20:25][:, acc_cols]).all()  # guests: no history, as in training
    shop = model.score_one(recs[10], snaps.accounts.get(recs[10]["account_id"]), None, None)
    assert shop["unknown_merchant"] and any("merchant" in d for d in shop["defaults_used"])
    # A fresher count sent with the ticket wins over the snapshot.
    X26, _ = model.features_batch(_requests(ds).iloc[25:26], snaps.frames()["accounts"])
    assert X26[0, FEATURES.index("prior_tickets_30d")] == 4.0


def test_snapshot_history_columns_come_from_the_training_function(ds, snapshots):
    _, snaps = snapshots
    ours = feature_snapshots(ds, AS_OF)["accounts"].set_index("account_id")
    acc_id = ours.index[ours["returns_30d"] > 0][0]
    row, snap = snaps.accounts[acc_id], ours.loc[acc_id]
    assert row["returns_30d"] == snap["returns_30d"] and 0.0 <= row["abuse_score"] <= 1.0  # ours win, theirs kept
    assert row["return_rate_90d"] == pytest.approx(snap["return_rate_90d"])
    assert snaps.accounts["A-ONLY-THEIRS"]["abuse_score"] == 1.0
    # Merchant columns: ours have their own names, so the merchant model's late_delivery_rate survives the join
    # (the merchant ranking reads it) and the triage model still reads its own.
    mid = next(iter(snaps.merchants))
    theirs = feature_snapshots(ds, AS_OF)["merchants"].set_index("merchant_id").loc[mid]
    assert snaps.merchants[mid]["late_delivery_rate"] == -7.0
    assert snaps.merchants[mid]["mer_late_delivery_rate"] == pytest.approx(theirs["mer_late_delivery_rate"],
                                                                           nan_ok=True)


def test_account_only_in_another_snapshot_scores_with_zero_history(ds, model, snapshots):
    """Our snapshot lists every account active in 365 days: one only the serial-returner snapshot lists was inactive,
    and gets the zero history training would compute (not the guest's 'unknown')."""
    _, snaps = snapshots
    t = _requests(ds).head(3).assign(account_id="A-ONLY-THEIRS", prior_tickets_30d=np.nan)
    frames = snaps.frames()
    X, flags = model.features_batch(t, frames["accounts"], frames["merchants"], frames["orders"])
    acc_cols = [FEATURES.index(c) for c in ACCOUNT_FEATURES]
    assert (X[:, acc_cols] == 0.0).all() and not flags["unknown_account"].any()
    r = _as_json(t)[0]
    one = model.score_one(r, snaps.accounts["A-ONLY-THEIRS"], snaps.merchants.get(r["merchant_id"]),
                          snaps.orders.get(r["order_id"]))
    assert not one["unknown_account"] and "no activity in the last 365 days" in one["defaults_used"][0]
    batch = model.score_batch(t, frames["accounts"], frames["merchants"], frames["orders"])
    assert abs(batch["escalation_probability"].iloc[0] - one["escalation_probability"]) <= 1e-9


def test_triage_adds_priority_action_and_policy_reasons(ds, model, snapshots):
    _, snaps = snapshots
    t = _requests(ds, 120)
    settings = Settings()
    frames = snaps.frames()
    batch = triage_batch(model, t, frames["accounts"], frames["merchants"], frames["orders"], settings)
    for i, r in enumerate(_as_json(t)[:60]):
        one = triage_one(model, r, snaps.accounts.get(r["account_id"]), snaps.merchants.get(r["merchant_id"]),
                         snaps.orders.get(r["order_id"]), settings)
        row = batch.iloc[i]
        assert (one["priority"], one["action"]) == (row["priority"], row["action"])
        assert one["reasons"] == row["reasons"] and one["policy_reasons"][0].startswith("escalation probability")
        assert one["abuse_risk"] == (None if row["abuse_risk"] is None else pytest.approx(row["abuse_risk"]))
    strict = triage_batch(model, t, frames["accounts"], frames["merchants"], frames["orders"],
                          Settings(p3_escalation=0.0, p2_escalation=0.0, p1_escalation=0.0))
    assert (strict["priority"] == "P1").all()  # thresholds are read from the settings passed in
