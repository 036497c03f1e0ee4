"""Which escalation drivers the ticket-triage model misses on the later tickets, and what the serving path costs.

For one tuning world (the ticket-triage section's protocol of ``aftersales benchmark-models``: train on the data as
known ``LABEL_DAYS`` before the end, score every later labelled ticket) this fits the escalation booster the way
``TicketTriageModel`` does (same parameters, early stopping on the latest 20%, the all-rows refit, half the training
rows as served from older snapshots: ``training.ticket_triage.fit_frame``) and prints one row of ROC-AUCs:

* ``case``: the case-type escalation rate; ``reference``: the world's own escalation probability (``truth/``,
  evaluation only: the ceiling of any scorer); ``served``: the later tickets as the service scores them from the
  training snapshot (``features.tickets.as_served``, lag = the ticket's age past the cut); ``offline``: the same
  tickets with their point-in-time features (what a snapshot refreshed at each ticket would give);
* ``fix_order`` / ``fix_account`` / ``fix_merchant``: served, with that column group replaced by its offline value
  (what the serving path loses on each group: the upper bound of any freshness fix of that group);
* ``cause_*``: per escalation cause (``truth/tickets.parquet``), the mean rank of the escalated tickets under the
  served score less under the true probability (negative: the model ranks them lower than it could);
* ``+abuser``, ``+day_load``: served, refitted with one "oracle" column added: the account's abuse at the ticket's
  time (``truth/accounts.parquet``) or the ticket's whole day's tickets over the median day (hindsight: it counts
  the rest of the day). How much each driver's information is missing, never a candidate;
* ``+mer_live``, ``+load_so_far``: candidates a ticket-only service could count live, point in time: the merchant's
  complaint and quality tickets in the 30 days before and their ratio to its monthly mean of the year before; the
  platform's tickets since the day's start over the tickets usually created by that time of day (the 28 days before)
  and that usual share of the day.

Usage: ``python benchmarks/diag_triage_drivers.py --root OUT/worlds --seeds 700-711`` (worlds kept by
``aftersales benchmark-models --models ticket_triage --keep-worlds --out OUT``, or generated under ROOT/seed_S when
missing). Tune on seeds below 1000 only. README "Ticket triage: where the margin is bound".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

def _booster(A, y, names, cats):
    """The model's two boosters (early-stopped on the latest slice, and refitted on every row), with the escalation
    model's own parameters (``TicketTriageModel.booster_params`` as training sets it up): a margin function."""
    import lightgbm as lgb

    from features.settings import Settings
    from features.ticket_model import TicketTriageModel
    from training.ticket_triage import model_params

    m = TicketTriageModel(**model_params(Settings()))
    params = m.booster_params()
    n_cal = int(round(len(y) * m.calibration_fraction))
    fit = lgb.Dataset(A[:-n_cal], y[:-n_cal], feature_name=names, categorical_feature=cats, free_raw_data=False)
    val = lgb.Dataset(A[-n_cal:], y[-n_cal:], reference=fit)
    first = lgb.train(params, fit, m.num_boost_round, valid_sets=[val],
                      callbacks=[lgb.early_stopping(m.early_stopping_rounds, verbose=False)])
    every = lgb.train(params, lgb.Dataset(A, y, feature_name=names, categorical_feature=cats), first.best_iteration)
    return lambda X: 0.5 * (first.predict(X, num_iteration=first.best_iteration, raw_score=True)
                            + every.predict(X, raw_score=True))


def extra_columns(ds, meta, truth: Path) -> dict:
    """Per ticket of ``meta``: the oracle columns (truth, hindsight) and the live-countable candidates."""
    import numpy as np
    import pandas as pd

    from features.pit import DAY_US, _keys, series_us, window_sum

    created = series_us(meta["created_at"])
    acc = pd.read_parquet(truth / "accounts.parquet").set_index("account_id")
    start = series_us(meta["account_id"].map(acc["abuse_start"]))
    out = {"abuser": (~np.isnan(start) & (created >= start)).astype(float)}
    t_all = np.sort(series_us(ds.tickets["created_at"]))
    day = (created // DAY_US).astype(np.int64)
    all_day = (t_all // DAY_US).astype(np.int64)
    daily = np.bincount(all_day - all_day.min())
    out["day_load"] = daily[day - all_day.min()] / np.median(daily[daily > 0])
    so_far = np.searchsorted(t_all, created, "left") - np.searchsorted(t_all, day * DAY_US, "left")
    tod, tod_all = created - day * DAY_US, t_all - all_day * DAY_US
    usual, usual_day = np.zeros(len(created)), np.zeros(len(created))
    for d in np.unique(day):
        sel = day == d
        a, b = np.searchsorted(all_day, d - 28, "left"), np.searchsorted(all_day, d, "left")
        usual[sel] = np.searchsorted(np.sort(tod_all[a:b]), tod[sel], "left") / 28.0
        usual_day[sel] = (b - a) / 28.0
    out["load_so_far"] = (so_far + 1) / (usual + 1)
    out["usual_share"] = usual / np.maximum(usual_day, 1e-9)
    t = ds.tickets
    q, k = _keys(meta["merchant_id"], t["merchant_id"])
    complaint = t["case_type"].astype(str).isin(["complaint", "quality"]).to_numpy(dtype=float)
    c30 = window_sum(k, series_us(t["created_at"]), complaint, q, created, 30)
    c365 = window_sum(k, series_us(t["created_at"]), complaint, q, created, 365)
    out["mer_complaints_30d"], out["mer_complaint_ratio"] = c30, (c30 + 0.5) / (c365 / 12 + 0.5)
    return out


def diagnose(wdir: Path, market: str) -> dict:
    import numpy as np
    import pandas as pd
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    from features.contract import load_dataset
    from features.pit import DAY_US, series_us
    from features.settings import Settings
    from features.ticket_features import ACCOUNT_FEATURES, MERCHANT_FEATURES
    from features.ticket_text import TextScorer, out_of_fold_text_scores
    from features.tickets import CATEGORICAL, FEATURES, CalendarTable, as_served, build_training_features
    from training.benchmark_worlds import last_day, utc_day_end
    from training.ticket_triage import fit_frame

    full, asof = load_dataset(wdir / "data"), load_dataset(wdir / "data_as_of")
    end = utc_day_end(last_day(wdir / "data_as_of"))
    cal = CalendarTable(market)
    feats = build_training_features(full, cal)
    meta = feats.meta
    known = asof.tickets.set_index("ticket_id")["escalated"]
    y_known = meta["ticket_id"].map(known)
    created = pd.to_datetime(meta["created_at"], utc=True)
    tr = np.flatnonzero(((created < end) & y_known.notna()).to_numpy())
    te = np.flatnonzero(((created >= end) & meta["escalated"].notna()).to_numpy())
    ytr = y_known.iloc[tr].astype(float).to_numpy()
    yte = meta["escalated"].iloc[te].astype(float).to_numpy()
    Xtr = fit_frame(feats, tr, Settings(market=market), asof)
    lag = (series_us(meta["created_at"].iloc[te]) - end.value / 1000) / DAY_US
    served, offline = as_served(full, feats, te, lag, cal), feats.X.iloc[te]
    j = FEATURES.index("text_score")
    scorer = TextScorer().fit(Xtr["text"], ytr)
    A = Xtr[list(FEATURES)].to_numpy(np.float64, copy=True)
    A[:, j] = out_of_fold_text_scores(Xtr["text"], ytr)
    S = served[list(FEATURES)].to_numpy(np.float64, copy=True)
    S[:, j] = scorer.score(served["text"])
    Xo = offline[list(FEATURES)].to_numpy(np.float64, copy=True)
    Xo[:, j] = scorer.score(offline["text"])
    cats = [FEATURES.index(c) for c in CATEGORICAL]
    truth = wdir / "data" / "truth"
    tk = pd.read_parquet(truth / "tickets.parquet").set_index("ticket_id")
    p_true = meta["ticket_id"].iloc[te].map(tk["p_escalate"]).to_numpy(np.float64)
    cause = meta["ticket_id"].iloc[te].map(tk["escalation_cause"]).to_numpy()
    rate = pd.Series(ytr).groupby(meta["case_type"].iloc[tr].to_numpy()).mean()
    auc = lambda p: float(roc_auc_score(yte, p))  # noqa: E731
    row = {"tickets": len(te), "escalated": int(yte.sum()),
           "case": auc(meta["case_type"].iloc[te].map(rate).fillna(ytr.mean()).to_numpy(np.float64)),
           "reference": auc(p_true)}
    margin = _booster(A, ytr, list(FEATURES), cats)
    s = margin(S)
    row.update(served=auc(s), offline=auc(margin(Xo)))
    groups = {"order": ("order_age_days", "lateness_days", "delivered_by_creation", "return_reason",
                        "days_since_return"), "account": ACCOUNT_FEATURES, "merchant": MERCHANT_FEATURES}
    for name, cols in groups.items():
        X = S.copy()
        idx = [FEATURES.index(c) for c in cols]
        X[:, idx] = Xo[:, idx]
        row[f"fix_{name}"] = auc(margin(X))
    gap = (rankdata(s) - rankdata(p_true)) / len(s)
    for c in sorted(set(cause[yte > 0])):
        row[f"cause_{c}"] = float(gap[(yte > 0) & (cause == c)].mean())
    ex = extra_columns(full, meta, truth)
    for name, cols in {"+abuser": ("abuser",), "+day_load": ("day_load",),
                       "+mer_live": ("mer_complaints_30d", "mer_complaint_ratio"),
                       "+load_so_far": ("load_so_far", "usual_share")}.items():
        add = lambda M, rows, cols=cols: np.column_stack([M] + [ex[c][rows] for c in cols])  # noqa: E731
        row[name] = auc(_booster(add(A, tr), ytr, [*FEATURES, *cols], cats)(add(S, te))) - row["served"]
    return row


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="700-711", help="Seeds S or S-T (random scenarios); tune below 1000.")
    ap.add_argument("--root", type=Path, default=Path("/tmp/diag_triage_drivers"),
                    help="Folder of seed_S worlds (benchmark-models --keep-worlds writes OUT/worlds).")
    ap.add_argument("--accounts", type=int, default=3000)
    ap.add_argument("--merchants", type=int, default=120)
    ap.add_argument("--out", type=Path, default=None, help="CSV of the rows (default ROOT/triage_drivers.csv).")
    args = ap.parse_args()
    seeds = _seeds(args.seeds)
    if max(seeds) >= 1000:
        sys.exit("seeds at or above 1000 are for reporting, not diagnosis")

    import pandas as pd

    from features.scenarios import make_scenario
    from features.synthetic import generate_world
    from training.benchmark_worlds import LABEL_DAYS, data_as_of, last_day

    rows = []
    for seed in seeds:
        wdir = args.root / f"seed_{seed}"
        sc = make_scenario("random", seed)
        if not (wdir / "data" / "tickets.parquet").exists():
            generate_world(wdir / "data", seed=seed, accounts=args.accounts, merchants=args.merchants,
                           progress=False, scenario=sc)
        if not (wdir / "data_as_of" / "tickets.parquet").exists():
            data_as_of(wdir / "data", wdir / "data_as_of", last_day(wdir / "data") - pd.Timedelta(days=LABEL_DAYS))
        market = json.loads((wdir / "data" / "dataset.json").read_text()).get("market", sc.market)
        row = {"seed": seed, **diagnose(wdir, market)}
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    table = pd.DataFrame(rows)
    out = args.out or args.root / "triage_drivers.csv"
    table.to_csv(out, index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(table.median(numeric_only=True).round(4).to_string())
    print(f"written {out}")


if __name__ == "__main__":
    main()
