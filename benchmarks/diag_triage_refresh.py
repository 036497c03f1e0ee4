"""Where the served features of the week after ``refresh-features`` differ from the offline point-in-time ones.

Runs the ticket-triage section of ``aftersales benchmark-models`` on one world (the same steps: train on the data
as known at the cut-off, serve every later ticket, ``refresh-features`` 30 days later, serve the week after) and, for
the refresh week, compares column by column the feature vector the service assembled with the offline one
(``build_training_features`` on the full data). Prints, per feature column: the share of tickets whose served value
differs (NaN on one side only counts as different), the mean absolute difference where both are numbers, and what
the column costs: the mean |p| change and the ROC-AUC change when only that column of the offline vector is replaced
by its served value.

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
    row = triage_section(data, asof, cut, sc.market, wdir / "models_as_of", week_features=week)
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


if __name__ == "__main__":
    main()
