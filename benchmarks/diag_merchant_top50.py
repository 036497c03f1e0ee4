"""Why the merchant ranking trails the world's latent risk: which merchants each puts in its top 50, and why.

Reads the worlds an ``aftersales benchmark-models --models merchant_risk`` run kept under ``BENCH/worlds/seed_S``
(its data, the data as known at the cut-off and the champion it trained there), ranks the merchants again with that
champion exactly as the merchant section does, and prints per world: scored merchants, NDCG@50 of the model, the
last-60-day rate and the latent risk (``truth/merchants.parquet``, evaluation only), and the share of the ideal top-50
gain each one's top 50 holds. Then, over all worlds, the merchants in the latent risk's top 50 but not the model's
(and the reverse), with their summed relevance gain (2^grade - 1), by what the world's truth says about them:
``future`` (a trouble episode, deterioration or recovery starting or ending inside the 60-day label window: no ranker
as of the cut-off can know it), ``recent`` (one in the 90 days before the cut-off), ``steady risky`` or ``steady
normal`` (a merchant whose state did not change, told apart only by its own customers' readiness to complain and its
baseline lateness and defects).

Usage: ``python benchmarks/diag_merchant_top50.py --bench /tmp/m400`` after ``aftersales benchmark-models --worlds 8
--seed-base 600 --models merchant_risk --merchants 400 --accounts 10000 --out /tmp/m400`` (tuning seeds only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

CHANGE_COLUMNS = ("episode_start", "episode_end", "deteriorates_at", "recovers_at")


def truth_kind(truth, merchant_id: str, day) -> str:
    """What the world's truth says about one merchant around the as-of ``day`` (see the module docstring)."""
    import pandas as pd

    row = truth.loc[merchant_id]
    times = [pd.Timestamp(row[c]) for c in CHANGE_COLUMNS if c in row.index and pd.notna(row[c])]
    if any(day < t <= day + pd.Timedelta(days=60) for t in times):
        return "future"
    if any(day - pd.Timedelta(days=90) < t <= day for t in times):
        return "recent"
    return "steady risky" if bool(row.get("risky", False)) else "steady normal"


def world_frame(wdir: Path):
    """The merchant section's frame of one kept world: features as of the cut-off, label, model score, latent."""
    import pandas as pd

    from features.scenarios import read_dataset_meta
    from training.benchmark_sections import merchant_frame
    from training.benchmark_worlds import LABEL_DAYS, last_day, world_settings

    settings = world_settings(wdir / "models_as_of", read_dataset_meta(wdir / "data").get("market", "CN"))
    frame, day = merchant_frame(wdir / "data", wdir / "data_as_of",
                                last_day(wdir / "data") - pd.Timedelta(days=LABEL_DAYS), settings)
    truth = pd.read_parquet(wdir / "data" / "truth" / "merchants.parquet")
    truth["merchant_id"] = truth["merchant_id"].astype(str)
    truth = truth.set_index("merchant_id")
    frame["latent"] = frame["merchant_id"].astype(str).map(truth["complaint_risk"]).astype(float)
    return frame, truth, day, settings.merchant_min_label_orders


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import pandas as pd

    from features.merchants import relevance_grades, sort_ranking
    from training.merchant_risk import ranking_metrics

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, required=True, help="OUT folder of a benchmark-models run (worlds kept)")
    ap.add_argument("--top", type=int, default=50, help="Size of the top list compared (NDCG@50: 50).")
    args = ap.parse_args(argv)
    worlds = sorted((args.bench / "worlds").glob("seed_*"), key=lambda p: int(p.name.split("_")[1]))
    if not worlds:
        raise SystemExit(f"{args.bench}/worlds holds no seed_* folder: run benchmark-models with --keep-worlds")
    rows, moved = [], []
    for wdir in worlds:
        frame, truth, day, min_orders = world_frame(wdir)
        ok = frame[frame["label_orders"] >= min_orders].copy()
        ok["gain"] = 2 ** relevance_grades(ok.assign(as_of=0), min_orders).to_numpy() - 1
        ideal = np.sort(ok["gain"].to_numpy())[::-1][:args.top].sum()
        top = {c: set(sort_ranking(ok, c)["merchant_id"].head(args.top)) for c in ("model", "baseline_rate", "latent")}
        row = {"world": wdir.name, "scored": len(ok)}
        for c in ("model", "baseline_rate", "latent"):
            row[f"ndcg50_{c}"] = ranking_metrics(frame, c, min_orders).get("ndcg_at_50", float("nan"))
        for c in ("model", "baseline_rate", "latent"):
            row[f"top_gain_{c}"] = ok.loc[ok["merchant_id"].isin(top[c]), "gain"].sum() / ideal
        rows.append(row)
        for a, b in (("latent", "model"), ("model", "latent")):
            part = ok[ok["merchant_id"].isin(top[a] - top[b])]
            for mid, g in zip(part["merchant_id"].astype(str), part["gain"], strict=True):
                moved.append({"side": f"in {a}'s top {args.top}, not {b}'s", "kind": truth_kind(truth, mid, day),
                              "gain": g})
        print(f"  {wdir.name}: done", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).set_index("world")
    pd.set_option("display.width", 200)
    print(table.round(3).to_string())
    print("median:", table.median().round(3).to_dict())
    by = pd.DataFrame(moved).groupby(["side", "kind"])["gain"].agg(["count", "sum", "mean"])
    print(f"\nmerchants in one top {args.top} but not the other, by what the truth says (gain = 2^grade - 1):")
    print(by.round(2).to_string())


if __name__ == "__main__":
    main()
