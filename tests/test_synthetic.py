"""The synthetic after-sales world: contract-valid, deterministic, and showing the mechanics models learn from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import TABLES, load_dataset
from features.synthetic import generate_world

WORLD = dict(seed=3, accounts=2000, merchants=60, start="2023-06-01", days=400, market="CN", progress=False)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic_world")
    return out, generate_world(out, **WORLD)


@pytest.fixture(scope="session")
def ds(world):
    return load_dataset(world[0])


@pytest.fixture(scope="session")
def truth(world) -> dict[str, pd.DataFrame]:
    t = world[0] / "truth"
    return {n: pd.read_parquet(t / f"{n}.parquet") for n in ("accounts", "merchants", "tickets")}


def _day(s: pd.Series) -> pd.Series:
    return s.dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    small = dict(accounts=300, merchants=20, start="2023-01-01", days=120, progress=False)
    a = _digest(Path(generate_world(tmp_path / "a", seed=5, **small)["out_dir"]))
    b = _digest(Path(generate_world(tmp_path / "b", seed=5, **small)["out_dir"]))
    c = _digest(Path(generate_world(tmp_path / "c", seed=6, **small)["out_dir"]))
    assert len(a) == 11 and a == b  # 5 tables + dataset.json + 3 truth tables + scenario.json + README
    assert a["orders.parquet"] != c["orders.parquet"] and a["truth/accounts.parquet"] != c["truth/accounts.parquet"]


def test_volume_follows_accounts(tmp_path):
    small = dict(merchants=20, start="2023-01-01", days=120, progress=False)
    n1 = generate_world(tmp_path / "a", accounts=300, **small)["orders_rows"]
    n2 = generate_world(tmp_path / "b", accounts=900, **small)["orders_rows"]
    assert 2.4 < n2 / n1 < 3.6


def test_rejects_tiny_world(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        generate_world(tmp_path, accounts=10, progress=False)
    with pytest.raises(ValueError, match="in the future"):
        generate_world(tmp_path, start=str(pd.Timestamp.now().date()), days=90, progress=False)


@pytest.mark.parametrize("market", ["US", "DE"])
def test_other_markets_load_cleanly(tmp_path, market):
    generate_world(tmp_path, accounts=300, merchants=15, start="2023-09-01", days=150, market=market, progress=False)
    ds = load_dataset(tmp_path)
    assert ds.n_rejected == 0 and len(ds.orders) > 1000
    daily = ds.orders.groupby(_day(ds.orders["ordered_at"])).size()
    assert daily[pd.Timestamp("2023-11-24")] > 2 * daily["2023-10-01":"2023-10-31"].median()  # Black Friday


def test_loads_with_zero_rejects(world, ds):
    _, summary = world
    assert ds.n_rejected == 0 and ds.rejects.empty
    for name in TABLES:
        r = ds.reports[name]
        assert r.rows_in == r.accepted + r.rejected and r.rejected == 0 and r.rows_in > 0, name
        assert summary[f"{name}_rows"] == r.rows_in
    assert not ds.reports["returns"].remapped  # every reason is a contract value
    assert ds.orders["ordered_at"].dt.tz is not None


def test_order_fields(ds):
    o = ds.orders
    assert 0.05 < o["account_id"].isna().mean() < 0.11  # guest checkouts
    assert o["region"].nunique() == 5 and o["category"].nunique() == 8
    promise = (o["promised_delivery_at"] - o["ordered_at"]).dt.days
    assert promise.between(1, 6).all()
    assert 0 < o["delivered_at"].isna().mean() < 0.05
    assert (o["line_no"] >= 1).all() and (o.groupby("order_id")["merchant_id"].nunique() == 1).all()


def test_orders_spike_on_events_and_dip_at_spring_festival(ds):
    daily = ds.orders.groupby(_day(ds.orders["ordered_at"])).size()
    base = daily["2023-10-10":"2023-10-31"].median()
    assert daily[pd.Timestamp("2023-11-11")] > 3 * base
    assert daily[pd.Timestamp("2023-11-24")] > 2.5 * base  # Black Friday
    assert daily["2023-12-08":"2023-12-22"].mean() > 1.2 * base  # Christmas gift buying
    assert daily["2024-02-10":"2024-02-16"].mean() < 0.7 * daily["2024-01-15":"2024-01-31"].mean()


def test_return_wave_one_to_three_weeks_after_singles_day(ds):
    daily = ds.returns.groupby(_day(ds.returns["requested_at"])).size()
    ev = pd.Timestamp("2023-11-11")
    before = daily[ev - pd.Timedelta(days=21):ev - pd.Timedelta(days=8)].sum()
    after = daily[ev + pd.Timedelta(days=7):ev + pd.Timedelta(days=20)].sum()
    assert after > 1.4 * before


def test_january_wave_after_christmas(ds):
    daily = ds.returns.groupby(_day(ds.returns["requested_at"])).size()
    assert daily["2024-01-01":"2024-01-21"].sum() > 1.3 * daily["2023-10-01":"2023-10-21"].sum()


def test_apparel_returns_more_than_grocery(ds):
    o = ds.orders
    single = o[o.groupby("order_id")["line_no"].transform("size") == 1]
    returned = single["order_id"].isin(ds.returns["order_id"].dropna())
    rate = returned.groupby(single["category"]).mean()
    assert rate["apparel"] > 0.15 and rate["grocery"] < 0.06 and rate["apparel"] > 4 * rate["grocery"]
    assert rate["shoes"] > rate["electronics"] > rate["grocery"]


def test_return_fields(ds):
    r, o = ds.returns, ds.orders
    assert 0 < r["order_id"].isna().mean() < 0.08
    not_rec = r[r["reason"] == "not_received"]
    assert len(not_rec) and (not_rec["item_returned"].dropna() == False).all()  # noqa: E712
    amount = o.groupby("order_id")["amount"].sum()
    known = r.dropna(subset=["order_id"])
    assert (known["refund_amount"] <= known["order_id"].map(amount) + 0.01).all()
    ordered = known["order_id"].map(o.groupby("order_id")["ordered_at"].min())
    assert (known["requested_at"] >= ordered).all()
    fit = r[r["reason"] == "size_fit"].dropna(subset=["order_id"])
    assert fit["order_id"].map(o.groupby("order_id")["category"].first()).isin(["apparel", "shoes"]).mean() > 0.8


def _account_rates(ds, truth) -> pd.DataFrame:
    lines = ds.orders.groupby("account_id").size().rename("lines")
    rets = ds.returns.groupby("account_id").size().rename("returns")
    acc = truth["accounts"].set_index("account_id").join(lines).join(rets).fillna({"lines": 0, "returns": 0})
    acc = acc[acc["lines"] > 0]
    return acc.assign(rate=acc["returns"] / acc["lines"])


def test_each_abuse_pattern_present_and_abusers_return_more(ds, truth):
    acc = _account_rates(ds, truth)
    assert set(truth["accounts"]["pattern"]) == {"normal", "serial", "wardrobing", "refund_without_return", "ring"}
    share = truth["accounts"]["is_abuser"].mean()
    assert 0.025 < share < 0.05
    rate = acc.groupby("pattern")["rate"].mean()
    assert acc.loc[acc["is_abuser"], "rate"].mean() > 2 * rate["normal"]
    assert rate["serial"] > 3 * rate["normal"] and rate["wardrobing"] > 2 * rate["normal"]
    assert 1.3 * rate["normal"] < rate["ring"] < rate["serial"]  # ring members alone look only mildly elevated
    r = ds.returns.merge(truth["accounts"][["account_id", "pattern"]], on="account_id", how="left")
    no_goods = (r["item_returned"] == False).groupby(r["pattern"]).mean()  # noqa: E712
    assert no_goods["refund_without_return"] > 3 * no_goods["normal"]


def test_abusers_start_at_different_times(truth):
    ab = truth["accounts"][truth["accounts"]["is_abuser"]]
    start = ab["abuse_start"]
    assert start.notna().all() and start.nunique() > 10
    mid = pd.Timestamp(WORLD["start"], tz="UTC") + pd.Timedelta(days=WORLD["days"] // 2)
    assert (start > mid).sum() >= 5


def test_wardrobers_return_right_after_events(ds, truth):
    r = ds.returns.merge(truth["accounts"][["account_id", "pattern"]], on="account_id")
    from features.calendar import calendar_features

    cal = calendar_features(_day(r["requested_at"]), "CN")
    soon_after = (cal["days_since_event"].to_numpy() <= 6) & (cal["days_since_event"].to_numpy() >= 1)
    share = pd.Series(soon_after, index=r.index).groupby(r["pattern"]).mean()
    assert share["wardrobing"] > 1.5 * share["normal"]


def test_ring_members_share_links_households_share_addresses(ds, truth):
    links = ds.account_links
    assert set(links["link_type"]) == {"address", "device", "payment", "phone", "email"}
    per_type = links.groupby("account_id")["link_type"].nunique()
    assert (per_type == 5).all() and len(per_type) == WORLD["accounts"]
    acc = truth["accounts"]
    ring = acc.dropna(subset=["ring_id"])
    assert ring["ring_id"].nunique() >= 2
    shared = links[links["link_type"].isin(["address", "device", "payment"])]
    shared = shared.merge(acc[["account_id", "ring_id"]], on="account_id")
    for rid, members in ring.groupby("ring_id")["account_id"]:
        vals = shared[shared["account_id"].isin(members)]
        users = vals.groupby("link_value")["account_id"].nunique()
        assert users.max() >= min(2, len(members)), rid
        # every member shares at least one identifier with another member
        common = vals[vals["link_value"].isin(users[users >= 2].index)]
        assert common["account_id"].nunique() == len(members) or len(members) == 1, rid
    normal_addr = links[(links["link_type"] == "address")].merge(acc[acc["pattern"] == "normal"], on="account_id")
    assert normal_addr["link_value"].duplicated(keep=False).mean() > 0.05  # sharing an address is not proof


def test_risky_merchants_draw_more_complaints(ds, truth):
    t = ds.tickets
    is_complaint = (t["case_type"] == "complaint") | (t["escalated"] == True)  # noqa: E712
    complaints = t[t["merchant_id"].notna() & is_complaint]
    m = truth["merchants"].set_index("merchant_id")
    m = m.join(ds.orders.groupby("merchant_id").size().rename("lines")).join(
        complaints.groupby("merchant_id").size().rename("complaints")).fillna({"lines": 0, "complaints": 0})
    pooled = m.groupby("risky")[["complaints", "lines"]].sum()
    per_line = pooled["complaints"] / pooled["lines"]
    assert per_line[True] > 1.8 * per_line[False]
    assert m["risky"].mean() > 0.05 and m["complaint_risk"].gt(0).all()
    big = m[m["lines"] > 300]
    assert big["complaint_risk"].corr(big["complaints"] / big["lines"], method="spearman") > 0.3


def test_deteriorating_merchants_get_late_after_onset(ds, truth):
    m = truth["merchants"]
    det = m[m["deteriorates_at"].notna() & m["risk_type"].isin(["late_delivery", "both"])]
    assert len(det) >= 1
    o = ds.orders.merge(det[["merchant_id", "deteriorates_at"]], on="merchant_id")
    late = (o["delivered_at"] - o["promised_delivery_at"]).dt.total_seconds() / 86_400
    after = o["ordered_at"] >= o["deteriorates_at"]
    assert late[after].mean() > late[~after].mean() + 0.5
    assert (m["deteriorates_at"].dropna() < pd.Timestamp(WORLD["start"], tz="UTC")
            + pd.Timedelta(days=WORLD["days"])).all()


def test_ticket_fields_and_escalation_causes(ds, truth):
    t = ds.tickets
    assert set(t["case_type"]) >= {"return", "refund", "exchange", "complaint", "logistics", "quality", "inquiry"}
    assert t["channel"].value_counts(normalize=True)["chat"] > 0.25
    closed = t["resolved_at"].notna()
    assert (t.loc[closed, "resolved_at"] >= t.loc[closed, "created_at"]).all()
    assert t.loc[~closed, "escalated"].isna().all() and t.loc[closed, "escalated"].notna().all()
    assert 0.08 < t["escalated"].mean() < 0.17
    by_case = t.groupby("case_type")["escalated"].mean()
    assert by_case["complaint"] > 3 * by_case["inquiry"]
    angry = t["text"].str.contains("lawyer|unacceptable|Worst|money back now", regex=True)
    assert t.loc[angry, "escalated"].mean() > 1.5 * t.loc[~angry, "escalated"].mean()
    assert t["text"].str.contains("still not arrived").any() and t["text"].str.contains("broken").any()
    tt = truth["tickets"]
    assert len(tt) == len(t) and set(tt["ticket_id"]) == set(t["ticket_id"])
    esc = tt[tt["escalated_latent"]]
    assert (esc["escalation_cause"] != "none").all() and esc["escalation_cause"].nunique() >= 4


def test_review_decisions_biased_sample_early(world, ds, truth):
    rv = ds.review_decisions
    assert len(rv) >= 30 and set(rv["decision"]) == {"confirmed_abuse", "cleared"}
    end60 = pd.Timestamp(WORLD["start"], tz="UTC") + pd.Timedelta(days=int(WORLD["days"] * 0.6))
    assert (rv["decided_at"] <= end60).all()
    rets = ds.returns.groupby("account_id").size()
    assert rets.reindex(rv["account_id"]).fillna(0).mean() > 2 * rets.mean()
    truth_abuse = rv["account_id"].map(truth["accounts"].set_index("account_id")["is_abuser"])
    agree = (truth_abuse == (rv["decision"] == "confirmed_abuse")).mean()
    assert agree > 0.75


def test_truth_files_and_readme(world, truth):
    assert {"account_id", "is_abuser", "pattern", "ring_id"} <= set(truth["accounts"].columns)
    assert {"merchant_id", "complaint_risk", "risky", "deteriorates_at", "category", "tenure_start"} <= set(
        truth["merchants"].columns)
    assert {"ticket_id", "escalation_cause"} <= set(truth["tickets"].columns)
    assert "Mechanics" in (world[0] / "truth" / "README.md").read_text()
    assert np.isclose(world[1]["abusive_accounts"], truth["accounts"]["is_abuser"].sum())


def test_weekly_cycle_in_return_requests(ds):
    dow = ds.returns["requested_at"].dt.day_of_week.value_counts()
    assert dow[0] > 1.25 * dow[[1, 2, 3]].mean() and dow[[5, 6]].mean() < dow[[1, 2, 3]].mean()


def test_merchant_episodes_raise_lateness_while_they_last(ds, truth):
    m = truth["merchants"]
    ep = m[m["episode_start"].notna()]
    assert len(ep) >= 3 and not ep["risky"].any()
    late_ep = ep[ep["episode_type"] == "late_delivery"]  # quality episodes change returns, not delivery time
    assert len(late_ep) >= 1
    o = ds.orders.merge(late_ep[["merchant_id", "episode_start", "episode_end"]], on="merchant_id")
    inside = (o["ordered_at"] >= o["episode_start"]) & (o["ordered_at"] < o["episode_end"])
    late = (o["delivered_at"] - o["promised_delivery_at"]).dt.total_seconds() / 86_400
    assert late[inside].mean() > late[~inside].mean() + 0.5


def test_cli_generate(tmp_path):
    from click.testing import CliRunner

    from training.cli import main

    res = CliRunner().invoke(main, ["generate", "--out", str(tmp_path / "w"), "--accounts", "200", "--merchants",
                                    "10", "--days", "90", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "orders_rows" in res.output and (tmp_path / "w" / "truth" / "README.md").exists()
