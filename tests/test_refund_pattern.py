"""Refund without return: claims weighed against the platform's own claim rate for parcels as late as the account's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.accounts import PatternDetector, account_features


def _frames(promised: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """300 ordinary accounts of 10 lines, 3 of them delivered 10 days late; a fifth of them claimed one late parcel
    'not received'. ONTIME claimed 2 of its on-time parcels, LATE 2 of its late ones (same lines, same lateness)."""
    rng = np.random.default_rng(0)
    o_rows, r_rows = [], []
    accounts = [f"A{i:03d}" for i in range(300)] + ["ONTIME", "LATE"]
    for a in accounts:
        for j in range(10):
            late = j < 3
            o_rows.append((f"{a}-{j}", a, "2023-03-01", "2023-03-05", "2023-03-15" if late else "2023-03-04"))
        if a.startswith("A") and rng.random() < 0.2:
            r_rows.append((f"R{a}", f"{a}-0", a))
    r_rows += [("R1", "ONTIME-5", "ONTIME"), ("R2", "ONTIME-6", "ONTIME"), ("R3", "LATE-0", "LATE"),
               ("R4", "LATE-1", "LATE")]
    orders = pd.DataFrame(o_rows, columns=["order_id", "account_id", "ordered_at", "promised_delivery_at",
                                           "delivered_at"])
    orders["line_no"], orders["quantity"], orders["merchant_id"] = 1, 1, "M1"
    orders["category"], orders["amount"] = "home", 20.0
    for c in ("ordered_at", "promised_delivery_at", "delivered_at"):
        orders[c] = pd.to_datetime(orders[c], utc=True).dt.as_unit("us")
    if not promised:
        orders = orders.drop(columns="promised_delivery_at")
    returns = pd.DataFrame(r_rows, columns=["return_id", "order_id", "account_id"])
    returns["requested_at"] = pd.to_datetime("2023-03-25", utc=True)
    returns["requested_at"] = returns["requested_at"].dt.as_unit("us")
    returns["reason"], returns["quantity"], returns["refund_amount"] = "not_received", 1, 20.0
    returns["merchant_id"], returns["item_returned"] = "M1", pd.array([False] * len(returns), dtype="boolean")
    for f in (orders, returns):
        for c in ("order_id", "account_id", "merchant_id", "return_id", "reason", "category"):
            if c in f:
                f[c] = f[c].astype("string")
    return orders, returns


def test_claims_count_against_the_delivery_record_and_every_account_gets_an_exposure():
    orders, returns = _frames()
    X = account_features(orders, returns, None, "2023-06-01")
    assert X.loc["ONTIME", "claims_on_delivered_365d"] == X.loc["LATE", "claims_on_delivered_365d"] == 2
    assert X.loc["ONTIME", "lines_delivered_365d"] == X.loc["LATE", "lines_delivered_365d"] == 10
    # The same delivered lines (3 late, 7 on time) give the same exposure, whichever parcels were claimed.
    assert X.loc["ONTIME", "claims_exposure_365d"] == X.loc["LATE", "claims_exposure_365d"] > 0


def test_an_account_claiming_only_on_time_parcels_is_more_unusual_than_one_with_late_parcels():
    orders, returns = _frames()
    # LATE2: 10 lines all delivered late, 2 claims; ONTIME2: 10 lines all on time, 2 claims.
    extra = orders[orders["account_id"].eq("A000")].copy()
    for name, deliv in (("LATE2", "2023-03-15"), ("ONTIME2", "2023-03-04")):
        e = extra.copy()
        e["account_id"] = pd.array([name] * len(e), dtype="string")
        e["order_id"] = pd.array([f"{name}-{j}" for j in range(len(e))], dtype="string")
        e["delivered_at"] = pd.to_datetime(deliv, utc=True)
        e["delivered_at"] = e["delivered_at"].dt.as_unit("us")
        orders = pd.concat([orders, e], ignore_index=True)
        r = returns.iloc[:2].copy()
        r["account_id"] = pd.array([name] * 2, dtype="string")
        r["order_id"] = pd.array([f"{name}-0", f"{name}-1"], dtype="string")
        r["return_id"] = pd.array([f"{name}R0", f"{name}R1"], dtype="string")
        returns = pd.concat([returns, r], ignore_index=True)
    X = account_features(orders, returns, None, "2023-06-01")
    assert X.loc["LATE2", "claims_exposure_365d"] > 3 * X.loc["ONTIME2", "claims_exposure_365d"]
    # Claims on parcels delivered on time count whole; on late parcels, by what the lateness does not explain.
    assert X.loc["ONTIME2", "claims_unexplained_365d"] == 2
    assert X.loc["LATE2", "claims_unexplained_365d"] < 0.5
    assert X.loc["LATE2", "no_item_exposure_365d"] > 3 * X.loc["ONTIME2", "no_item_exposure_365d"]
    tails = PatternDetector().fit(X).tails(X)["refund_without_return"]
    assert tails["ONTIME2"] > tails["LATE2"] + 1.0
    # The reason says so: the refunds expected for parcels as late as its own, and the claims lateness does not
    # explain where it explains some.
    from features.account_reasons import pattern_text
    from features.accounts import SerialReturnerModel

    model = SerialReturnerModel().fit(X)
    rates = {k: model.detector_.rates_[k] for k in model.detector_._tests()["refund_without_return"]}
    text = {a: pattern_text("refund_without_return", X.loc[a].to_dict(), float(tails[a]), rates, model.typical_)
            for a in ("LATE2", "ONTIME2")}
    assert "2 'not received' claims on delivered parcels" in text["ONTIME2"]
    assert "not explained by late delivery" not in text["ONTIME2"], text
    late = float(X.loc["LATE2", "claims_unexplained_365d"])
    assert f"({late:.1f} not explained by late delivery)" in text["LATE2"], text
    for a in ("LATE2", "ONTIME2"):
        expected = X.loc[a, "no_item_exposure_365d"] * rates[("no_item_on_delivered_365d", "no_item_exposure_365d")]
        assert f"{expected:.1f} expected for parcels as late as its own" in text[a], text


def test_without_promised_dates_the_exposure_is_the_delivered_lines():
    orders, returns = _frames(promised=False)
    X = account_features(orders, returns, None, "2023-06-01")
    for col in ("claims_exposure_365d", "no_item_exposure_365d"):
        np.testing.assert_allclose(X[col], X["lines_delivered_365d"])
    np.testing.assert_allclose(X["claims_unexplained_365d"], X["claims_on_delivered_365d"])
    assert PatternDetector().fit(X).tails(X)["refund_without_return"].notna().all()
