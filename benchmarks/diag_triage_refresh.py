"""Where the served features of the week after ``refresh-features`` differ from the offline point-in-time ones.

Runs the ticket-triage section of ``aftersales benchmark-models`` on one world (the same steps: train on the data
as known at the cut-off, serve every later ticket, ``refresh-features`` 30 days later, serve the week after) and, for
the refresh week, compares column by column the feature vector the service assembled with the offline one
(``build_training_features`` on the full data). Prints, per feature column: the share of tickets whose served value
differs (NaN on one side only counts as different), the mean absolute difference where both are numbers, and what
the column costs: the mean |p| change and the ROC-AUC change when only that column of the offline vector is replaced
by its served value.

Then a "what if" table: the week's ROC-AUC gap (offline - served) and mean |p served - p offline| when a group of
columns is made exact (the offline value: what no snapshot can do, an upper bound for any fix of that group), and
when the account and merchant columns are aged to each ticket's time (the training functions evaluated at the
ticket's creation on the refreshed data: what a snapshot keeping its windows' events would serve, new events since
the refresh left out, or added at the entity's own rate over the window), with the paired-bootstrap standard
deviation of the gap (how much of it is the week's few escalations).

Usage: ``python benchmarks/diag_triage_refresh.py --seed 600 [--root /tmp/diag]`` (tune on seeds below 1000; a
world already under ROOT/seed_S/data is reused).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def column_table(served, offline, model, y, labelled):
    """Per feature column: share differing, mean |difference|, and the cost of its served value alone."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from features.tickets import FEATURES

    def auc(p):
        yl = y[labelled]
        return float(roc_auc_score(yl, p[labelled])) if 0 < yl.sum() < len(yl) else float("nan")

    p_off = model.predict(offline)
    base_auc = auc(p_off)
    rows = []
    for j, name in enumerate(FEATURES):
        s, o = served[:, j], offline[:, j]
        both = ~np.isnan(s) & ~np.isnan(o)
        differs = (np.isnan(s) != np.isnan(o)) | (both & ~np.isclose(s, o, rtol=1e-9, atol=1e-12))
        X = offline.copy()
        X[:, j] = s
        p = model.predict(X)
        rows.append({"feature": name, "differs": differs.mean(), "nan_only_one_side": (np.isnan(s) != np.isnan(o)).mean(),
                     "mean_abs_diff": float(np.abs(s - o)[both].mean()) if both.any() else float("nan"),
                     "mean_abs_dp": float(np.abs(p - p_off).mean()), "auc_change": auc(p) - base_auc})
    return pd.DataFrame(rows)


# Columns the service keeps live (equal to the offline ones when it saw every ticket): never replaced below.
LIVE_ACCOUNT_COLUMNS = ("prior_tickets_30d", "acct_tickets_365d")
ORDER_COLUMNS = ("order_age_days", "lateness_days", "delivered_by_creation", "return_reason", "days_since_return")
# Count columns of the account snapshot and their windows (days): aged counts may add arrivals at the entity's rate.
COUNT_WINDOWS = {"returns_30d": 30, "refund_without_return_90d": 90, "acct_escalations_365d": 365,
                 "acct_returns_365d": 365, "acct_refund_without_return_365d": 365}


def what_if(week: dict, refresh_dir: Path, boot: int = 400):
    """The refresh week's gap when column groups are exact, or the account and merchant columns aged to the ticket's
    time (see the module doc); one row per variant."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from features.contract import load_dataset
    from features.pit import DAY_US, series_us, to_us
    from features.ticket_features import ACCOUNT_FEATURES, MERCHANT_FEATURES
    from features.ticket_history import account_history, merchant_signals, order_table
    from features.ticket_snapshots import data_end
    from features.tickets import FEATURES

    idx = {f: i for i, f in enumerate(FEATURES)}
    served, offline, model, t = week["served"], week["offline"], week["model"], week["tickets"]
    lab = week["labelled"]
    y = week["y"][lab]
    p_off = model.predict(offline)
    auc_off = float(roc_auc_score(y, p_off[lab]))
    ds = load_dataset(refresh_dir)
    created = series_us(t["created_at"])
    elapsed = (created - to_us(data_end(ds))) / DAY_US
    acc = account_history(ds, t["account_id"].astype("string"), created)
    mer = merchant_signals(ds, t["merchant_id"].astype("string"), created, order_table(ds.orders))
    aged_cols = {c: acc[c].to_numpy(dtype=np.float64) for c in ACCOUNT_FEATURES if c not in LIVE_ACCOUNT_COLUMNS}
    aged_cols |= {c: mer[c].to_numpy(dtype=np.float64) for c in MERCHANT_FEATURES}
    at_rate = dict(aged_cols)
    for c, days in COUNT_WINDOWS.items():  # + new events since the refresh at the snapshot's own rate
        at_rate[c] = aged_cols[c] + served[:, idx[c]] / days * elapsed
    exact = {"account": [c for c in ACCOUNT_FEATURES if c not in LIVE_ACCOUNT_COLUMNS],
             "merchant": list(MERCHANT_FEATURES), "order": list(ORDER_COLUMNS)}
    variants = {"served (as is)": {}}
    for name, cols in exact.items():
        variants[f"exact {name} columns"] = {c: offline[:, idx[c]] for c in cols}
    variants["exact account + merchant columns"] = {c: offline[:, idx[c]] for c in exact["account"] + exact["merchant"]}
    variants["account + merchant aged to the ticket's time"] = aged_cols
    variants["... and new events at the entity's rate"] = at_rate
    rng = np.random.default_rng(0)
    draws = [i for i in (rng.integers(0, len(y), len(y)) for _ in range(boot)) if 0 < y[i].sum() < len(i)]
    rows = []
    for name, cols in variants.items():
        X = served.copy()
        for c, v in cols.items():
            X[:, idx[c]] = v
        p = model.predict(X)
        gaps = [roc_auc_score(y[i], p_off[lab][i]) - roc_auc_score(y[i], p[lab][i]) for i in draws]
        rows.append({"variant": name, "gap": auc_off - float(roc_auc_score(y, p[lab])),
                     "gap_boot_sd": float(np.std(gaps)), "mean_abs_dp": float(np.abs(p - p_off).mean())})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=600, help="World seed (random scenario); tune below 1000.")
    ap.add_argument("--root", type=Path, default=Path("/tmp/diag_triage_refresh"))
    ap.add_argument("--accounts", type=int, default=3000)
    ap.add_argument("--merchants", type=int, default=120)
    args = ap.parse_args()
    if args.seed >= 1000:
        sys.exit("seeds at or above 1000 are for reporting, not diagnosis")

    import logging

    import numpy as np
    import pandas as pd

    from features.scenarios import make_scenario
    from features.synthetic import generate_world
    from training.benchmark_sections import triage_section
    from training.benchmark_worlds import LABEL_DAYS, data_as_of, last_day

    for name in ("mlflow", "aftersales.serving", "serving", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    wdir = args.root / f"seed_{args.seed}"
    data = wdir / "data"
    sc = make_scenario("random", args.seed)
    if not (data / "tickets.parquet").exists():
        generate_world(data, seed=args.seed, accounts=args.accounts, merchants=args.merchants, progress=False,
                       scenario=sc)
    for d in ("data_as_of", "data_refresh", "models_as_of"):
        shutil.rmtree(wdir / d, ignore_errors=True)
    cut = last_day(data) - pd.Timedelta(days=LABEL_DAYS)
    asof = data_as_of(data, wdir / "data_as_of", cut)
    week: dict = {}
    # the one-refresh week is what the per-column and what-if tables analyse: the daily cadence is not needed here
    row = triage_section(data, asof, cut, sc.market, wdir / "models_as_of", week_features=week, cadence="once")
    print(f"seed {args.seed} ({sc.market}): refresh as of {row.get('refresh_as_of')}, "
          f"{row.get('refresh_week_tickets')} labelled tickets in the week; ROC-AUC served "
          f"{row.get('refresh_week_served', float('nan')):.4f}, offline {row.get('refresh_week_offline', float('nan')):.4f}, "
          f"gap {row.get('refresh_week_gap', float('nan')):+.4f} (stale {row.get('refresh_week_stale', float('nan')):.4f}); "
          f"all later tickets: model {row['model']:.4f} vs case type {row['case_type_rate']:.4f}")
    if "served" not in week:
        return
    t = week["tickets"]
    print(f"{len(t):,} tickets in the week ({int(week['labelled'].sum())} labelled); mean |p served - p offline| "
          f"{np.abs(week['p_served'] - week['p_offline']).mean():.4f}")
    table = column_table(week["served"], week["offline"], week["model"], week["y"], week["labelled"])
    with pd.option_context("display.width", 200, "display.max_rows", 100):
        print(table.round(4).to_string(index=False))
    out = wdir / "refresh_week_columns.csv"
    table.to_csv(out, index=False)
    print(f"written {out}")
    print(f"\nwhat if ({int(week['y'][week['labelled']].sum())} escalated of {int(week['labelled'].sum())} labelled):")
    variants = what_if(week, wdir / "data_refresh")
    print(variants.round(4).to_string(index=False))
    variants.to_csv(wdir / "refresh_week_what_if.csv", index=False)


if __name__ == "__main__":
    main()
