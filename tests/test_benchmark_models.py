"""The cross-world benchmark end to end on two small worlds; its baseline figures recomputed from the worlds' files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.calendar import holiday_windows
from training.benchmark import SECTIONS, run_benchmark

SEEDS = (5, 6)  # tuning seeds (below 1000)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = run_benchmark(len(SEEDS), SEEDS[0], out, accounts=700, merchants=40, echo=lambda s: None, progress=False)
    return out, res


def _world_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["seed"].notna()].set_index("seed")


def test_tables_have_every_world_model_and_baseline(bench):
    out, res = bench
    assert res["html"].exists() and "<img src='data:image/png;base64," in res["html"].read_text()
    for key, section in SECTIONS.items():
        table = pd.read_csv(out / f"{key}.csv")
        rows = _world_rows(table)
        assert sorted(rows.index.astype(int)) == list(SEEDS)
        assert (rows["error"].fillna("") == "").all(), rows["error"].tolist()
        for col in ("model", *section.baselines):
            assert rows[col].notna().all() or col in ("planners_last_year", "mstl"), (key, col)
        summary = table[table["seed"].isna()].set_index("world")
        assert list(summary.index) == ["min", "median", "max", "wins", *(["pooled"] if section.pooled else [])]
        vals = rows[["model", *section.baselines]].astype(float)
        for col, weight in section.pooled:
            # All worlds' hits over all worlds' K: precision x K summed, over K summed.
            hits = (rows[col].astype(float) * rows[weight].astype(float)).sum()
            assert summary.loc["pooled", col] == pytest.approx(hits / rows[weight].astype(float).sum())
        assert summary.loc["min", "model"] == pytest.approx(vals["model"].min())
        assert summary.loc["median", "model"] == pytest.approx(vals["model"].median())
        better = vals["model"] > vals[list(section.baselines)].max(axis=1) if section.higher_is_better else \
            vals["model"] < vals[list(section.baselines)].min(axis=1)
        assert summary.loc["wins", "model"] == better.sum()
    assert set(pd.read_csv(out / "timings.csv")["seed"]) == set(SEEDS)


def _daily_returns(world) -> pd.Series:
    o = pd.read_parquet(world / "orders.parquet", columns=["ordered_at"])["ordered_at"]
    r = pd.read_parquet(world / "returns.parquet", columns=["requested_at"])["requested_at"]
    rd = r.dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    od = o.dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    days = pd.date_range(min(rd.min(), od.min()), max(rd.max(), od.max()), freq="D")
    return rd.value_counts().reindex(days, fill_value=0).astype(float)


def test_seasonal_naive_wape_recomputed_from_the_world(bench):
    out, res = bench
    rows = _world_rows(res["tables"]["holiday_volume"])
    for seed in SEEDS:
        world = out / "worlds" / f"seed_{seed}" / "data"
        market = __import__("json").loads((world / "dataset.json").read_text())["market"]
        y = _daily_returns(world)
        row = rows.loc[seed]
        origin, h = pd.Timestamp(row["origin"]), int(row["horizon"])
        dates = pd.date_range(origin + pd.Timedelta(days=1), periods=h, freq="D")
        # Seasonal naive: the same weekday of the week before the origin.
        naive = np.array([y[origin - pd.Timedelta(days=7 * int(np.ceil(k / 7)) - k)] for k in range(1, h + 1)])
        hw = holiday_windows(market, dates[0] - pd.Timedelta(days=60), dates[-1])
        inside = np.zeros(h, dtype=bool)
        for _, w in hw.iterrows():
            inside |= (dates >= w["window_start"]) & (dates <= w["window_end"])
        actual = y.reindex(dates).to_numpy()
        expected = np.abs(naive - actual)[inside].sum() / actual[inside].sum()
        assert row["seasonal_naive_7"] == pytest.approx(expected, rel=1e-9)
        assert row["window_days"] == inside.sum() > 0
        assert 0 <= row["coverage80_model"] <= 1


def test_return_rate_rule_precision_recomputed_from_the_world(bench):
    out, res = bench
    rows = _world_rows(res["tables"]["serial_returners"])
    for seed in SEEDS:
        world = out / "worlds" / f"seed_{seed}" / "data"
        row = rows.loc[seed]
        end = pd.Timestamp(row["t2"], tz="UTC") + pd.Timedelta(days=1)
        o = pd.read_parquet(world / "orders.parquet", columns=["account_id", "ordered_at"])
        r = pd.read_parquet(world / "returns.parquet", columns=["account_id", "requested_at"])
        n_o = o.loc[o["ordered_at"] < end, "account_id"].dropna().value_counts()
        n_r = r.loc[r["requested_at"] < end, "account_id"].dropna().value_counts()
        accounts = sorted(set(n_o.index) | set(n_r.index))
        n_o, n_r = n_o.reindex(accounts, fill_value=0), n_r.reindex(accounts, fill_value=0)
        truth = pd.read_parquet(world / "truth" / "accounts.parquet").set_index("account_id").reindex(accounts)
        abuser = truth["is_abuser"] & (truth["abuse_start"] <= pd.Timestamp(row["t2"], tz="UTC"))
        k = int(abuser.sum())
        assert k == row["k"] and len(accounts) == row["accounts"]
        rule = pd.DataFrame({"score": (n_r + 1) / (n_o + 10), "id": accounts})
        top = rule.sort_values(["score", "id"], ascending=[False, True]).head(k).index
        assert row["rule_return_rate"] == pytest.approx(abuser.loc[top].mean())
        most = pd.DataFrame({"score": n_r.astype(float), "id": accounts})
        top = most.sort_values(["score", "id"], ascending=[False, True]).head(k).index
        assert row["most_returns"] == pytest.approx(abuser.loc[top].mean())
        # The refit learns from the decisions, and is used only if it beats the cold start on held-out ones.
        assert 0 <= row["model_200"] <= 1 and row["mode_after_review"] in ("supervised", "cold_start")
        # ... and is judged against the cold start's queue on the same (unreviewed) accounts: kept cold, the same.
        assert 0 <= row["cold_start_200"] <= 1
        # The top-score part (reserved pattern slots and the audit sample left out) is a part of each queue.
        for name in ("model_200", "cold_start_200"):
            assert 0 <= row[f"{name}_top_score_n"] <= row["k_after_review"]
            assert 0 <= row[f"{name}_top_score_part"] <= 1 or row[f"{name}_top_score_n"] == 0
        if row["mode_after_review"] == "cold_start":
            assert row["model_200"] == row["cold_start_200"]
            assert row["model_200_top_score_part"] == row["cold_start_200_top_score_part"]


def test_a_failing_section_is_recorded_and_the_rest_runs(tmp_path, monkeypatch):
    import training.benchmark as b

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(b, "holiday_section", broken)
    res = run_benchmark(1, 7, tmp_path, accounts=400, merchants=25, sections=("holiday_volume", "serial_returners"),
                        echo=lambda s: None, progress=False)
    hv = _world_rows(res["tables"]["holiday_volume"])
    assert hv["error"].iloc[0] == "RuntimeError: boom" and np.isnan(hv["model"].iloc[0])
    sr = _world_rows(res["tables"]["serial_returners"])
    assert sr["error"].fillna("").iloc[0] == "" and 0 <= sr["model"].iloc[0] <= 1


def test_ticket_triage_reports_the_week_after_a_refresh(bench):
    """The triage section scores every later ticket through the Runtime, then the week after `refresh-features`
    through a Runtime that swapped to the refreshed generation, next to the offline point-in-time figure."""
    out, _ = bench
    rows = _world_rows(pd.read_csv(out / "ticket_triage.csv"))
    assert (rows["tickets_sent"] >= rows["tickets"]).all() and (rows["tickets"] > 0).all()
    assert rows["refresh_as_of"].notna().all() and (rows["refresh_week_tickets"] > 0).all()
    measured = rows.dropna(subset=["refresh_week_served", "refresh_week_offline"])
    assert len(measured) >= 1
    assert np.allclose(measured["refresh_week_gap"],
                       measured["refresh_week_offline"] - measured["refresh_week_served"])
    assert measured[["refresh_week_served", "refresh_week_offline"]].stack().between(0.5, 1.0).all()
    # each world's ceiling (the generator's own escalation probability on the same tickets) and the lift's noise
    assert (rows["escalation_reference"] > rows["case_type_rate"]).all()
    assert (rows["escalation_reference"] <= 1.0).all()
    assert ((rows["lift_sd"] > 0) & (rows["lift_sd"] < 0.2)).all()


def test_ticket_triage_reports_the_daily_refresh_cadence_and_the_gaps_noise(bench):
    """The default cadence also scores the same week with `refresh-features` each morning (the Runtime swapping to
    each day's generation): its gap is against the same offline figure, and both gaps carry a bootstrap SD."""
    out, _ = bench
    rows = _world_rows(pd.read_csv(out / "ticket_triage.csv"))
    for col in ("refresh_daily_served", "refresh_daily_gap", "refresh_week_gap_sd", "refresh_daily_gap_sd",
                "refresh_week_seconds", "refresh_daily_seconds"):
        assert col in rows.columns, col
    assert ((rows["refresh_week_seconds"] > 0) & (rows["refresh_daily_seconds"] > 0)).all()
    measured = rows.dropna(subset=["refresh_daily_served", "refresh_week_offline"])
    assert len(measured) >= 1
    assert np.allclose(measured["refresh_daily_gap"],
                       measured["refresh_week_offline"] - measured["refresh_daily_served"])
    assert measured["refresh_daily_served"].between(0.5, 1.0).all()
    sds = measured[["refresh_week_gap_sd", "refresh_daily_gap_sd"]]
    assert sds.notna().all().all() and (sds >= 0).all().all() and (sds < 0.2).all().all()


def test_gap_sd_is_a_paired_bootstrap_of_the_auc_difference():
    """Identical scores: every resample's gap is 0; scores that differ: a positive SD, the same for the same seed."""
    from training.benchmark_sections import _gap_sd

    rng = np.random.default_rng(1)
    y = rng.random(150) < 0.3
    off = y + rng.normal(0, 0.8, len(y))
    noisy = off + rng.normal(0, 0.8, len(y))
    sd = _gap_sd(y, off, {"same": off.copy(), "noisy": noisy})
    assert sd["same"] == 0.0
    assert 0 < sd["noisy"] < 0.2 and _gap_sd(y, off, {"noisy": noisy})["noisy"] == sd["noisy"]


def test_latent_risk_reference_scores_the_worlds_truth_on_the_same_merchants(tmp_path):
    from training.benchmark_sections import latent_risk_reference

    rng = np.random.default_rng(0)
    ids = [f"M{i:03d}" for i in range(60)]
    rate = rng.uniform(0, 0.1, len(ids))
    frame = pd.DataFrame({"merchant_id": ids, "label_orders": 30, "label_rate": rate, "as_of": 0})
    assert np.isnan(latent_risk_reference(frame, tmp_path, 20))  # no truth: no reference
    (tmp_path / "truth").mkdir()
    truth = pd.DataFrame({"merchant_id": ids, "complaint_risk": rate})
    truth.to_parquet(tmp_path / "truth" / "merchants.parquet")
    assert latent_risk_reference(frame, tmp_path, 20) == pytest.approx(1.0)  # the truth ranks the label exactly
    truth.assign(complaint_risk=-rate).to_parquet(tmp_path / "truth" / "merchants.parquet")
    assert latent_risk_reference(frame, tmp_path, 20) < 0.5


def test_escalation_reference_scores_the_worlds_escalation_probability_on_the_same_tickets(tmp_path):
    from training.benchmark_sections import escalation_reference

    rng = np.random.default_rng(2)
    tickets = pd.DataFrame({"ticket_id": [f"T{i:04d}" for i in range(300)]})
    p = rng.uniform(0.01, 0.6, len(tickets))
    y = rng.random(len(tickets)) < p
    assert np.isnan(escalation_reference(tmp_path, tickets, y))  # no truth: no reference
    (tmp_path / "truth").mkdir()
    truth = pd.DataFrame({"ticket_id": tickets["ticket_id"], "p_escalate": p}).iloc[::-1]  # joined by ID, not order
    truth.to_parquet(tmp_path / "truth" / "tickets.parquet")
    from sklearn.metrics import roc_auc_score

    assert escalation_reference(tmp_path, tickets, y) == pytest.approx(roc_auc_score(y, p))
    assert escalation_reference(tmp_path, tickets, p > 0.3) == pytest.approx(1.0)  # the outcome follows p exactly
    truth.iloc[5:].to_parquet(tmp_path / "truth" / "tickets.parquet")
    assert np.isnan(escalation_reference(tmp_path, tickets, y))  # a ticket the truth lacks: no reference


def test_ticket_triage_served_with_refreshes_every_n_days(bench):
    """``serve_refresh_days``: the later tickets also go through a Runtime that runs `refresh-features` every N days
    of the later period and swaps to it: one refresh per N-day step that still has tickets, the last on the data as of
    that step's start, and the ROC-AUC of what it served next to the service left on the training generation."""
    import json

    from training.benchmark_sections import triage_section
    from training.benchmark_worlds import LABEL_DAYS, last_day, utc_day_end

    out, _ = bench
    wdir = out / "worlds" / f"seed_{SEEDS[0]}"
    data = wdir / "data"
    cut = last_day(data) - pd.Timedelta(days=LABEL_DAYS)
    market = json.loads((data / "dataset.json").read_text())["market"]
    row = triage_section(data, wdir / "data_as_of", cut, market, wdir / "models_as_of", cadence="once",
                         serve_refresh_days=20)
    created = pd.read_parquet(data / "tickets.parquet")["created_at"]
    start = utc_day_end(cut)
    steps = [k for k in (20, 40, 60, 80) if (created >= start + pd.Timedelta(days=k)).any()]
    assert row["serve_refresh_days"] == 20 and row["serve_refreshes"] == len(steps) >= 1
    meta = json.loads((wdir / "data_serve_refresh" / "dataset.json").read_text())
    assert pd.Timestamp(meta["end"]) == (cut + pd.Timedelta(days=steps[-1])).normalize()
    assert 0.5 <= row["model_refreshed"] <= 1.0 and 0.5 <= row["model"] <= 1.0
    assert row["serve_refresh_seconds"] > 0
    # A period shorter than N: no refresh, the training generation throughout (not the later one the runs above left
    # current): the very probabilities, so the ROC-AUC, of the service left on the training generation.
    from training.benchmark_sections import _auc, _served_with_refreshes
    from training.benchmark_worlds import world_settings

    later = pd.read_parquet(data / "tickets.parquet")
    later = later[later["created_at"] >= start].sort_values(["created_at", "ticket_id"], kind="stable")
    later = later.reset_index(drop=True)
    probs, n = _served_with_refreshes(world_settings(wdir / "models_as_of", market), data, wdir / "data_serve_refresh",
                                      later, cut, 1000, 2000)
    labelled = later["escalated"].notna().to_numpy()
    y = later["escalated"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    assert n == 0 and _auc(y[labelled], probs[labelled]) == row["model"]
