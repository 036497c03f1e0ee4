"""Who the innocent accounts in the cold-start queue are, and how crowded the queue's edge is.

Generates the worlds of the given seeds (random scenario, as ``aftersales benchmark-models`` does; tuning seeds
only), builds the cold-start queue of K = abusive accounts as of T2 exactly as the benchmark's serial section does
(the model fitted at T1 with no decisions, scored through ``for_day``), and prints per world: K, the precision of the
queue's top-score part, its innocent accounts by what the world's truth says they are (``bracketer``: an honest
customer who orders several sizes and sends the rest back; ``normal``: any other honest account) and by the pattern
whose detector tail ranked them (the largest of :meth:`PatternDetector.tails`), and the edge of the queue: the lowest
score in the top-score part, how many innocent accounts and how many missed abusers (by pattern) score within one
unit (-log10 p) below it. Then the totals over all worlds.

The edge says what reordering can buy: an innocent account pushed out of the top-score part is replaced by the next
account below the cut, which is innocent as often as the edge is crowded with innocents.

Usage: ``python benchmarks/diag_serial_queue.py --seeds 600-611,700-711 --out /tmp/diag_sq``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def parse_seeds(text: str) -> list[int]:
    """'600-611,700' -> [600, ..., 611, 700]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def world_rows(seed: int, root: Path, accounts: int, merchants: int):
    """One frame per world: every account as of T2 with its score, per-pattern tails, truth class and queue slot."""
    import numpy as np
    import pandas as pd

    from features.accounts import queue_settings, review_queue
    from features.contract import load_dataset
    from features.scenarios import make_scenario
    from features.synthetic import generate_world
    from training.benchmark_worlds import world_settings
    from training.serial_returners import (
        _truth,
        default_split,
        excluded_accounts,
        features_as_of,
        fit_model,
        load_labels,
    )

    sc = make_scenario("random", seed)
    data = root / f"seed_{seed}" / "data"
    if not (data / "truth" / "accounts.parquet").exists():
        generate_world(data, seed=seed, accounts=accounts, merchants=merchants, progress=False, scenario=sc)
    settings = world_settings(root / f"seed_{seed}" / "models", sc.market)
    ds = load_dataset(data)
    ds.tables["review_decisions"] = ds.tables["review_decisions"].iloc[0:0]  # a platform with no decisions yet
    t1, t2 = default_split(ds, settings)
    X1, X2 = features_as_of(ds, t1, settings, sc.market), features_as_of(ds, t2, settings, sc.market)
    labels = load_labels(ds, settings, t1)
    model = fit_model(X1, labels, settings, t1, source=str(data)).for_day(X2)
    truth = _truth(data).reindex(X2.index.astype(str))
    y = (truth["is_abuser"].fillna(False).astype(bool) & (truth["abuse_start"] <= t2)).to_numpy()
    honest = np.where(truth["bracketer"].fillna(False).astype(bool), "bracketer", "normal")
    tails = model.detector_.tails(X2)
    score = model.predict(X2)
    queue = review_queue(X2, model, int(y.sum()), exclude=excluded_accounts(labels, t2,
                                                                            settings.serial_review_cooldown_days),
                         scores=score, **queue_settings(settings))
    top = set(queue.loc[queue["slot"].eq("top score"), "account_id"].astype(str))
    return pd.DataFrame({"seed": seed, "abuser": y, "who": np.where(y, truth["pattern"].astype(str), honest),
                         "pattern": tails.idxmax(axis=1).to_numpy(), "evidence": tails.sum(axis=1).to_numpy(),
                         "top": X2.index.astype(str).isin(list(top))}, index=X2.index)


def edge(frame):
    """(cut, innocent accounts, missed abusers by pattern) within one unit of evidence below the top-score part."""
    cut = float(frame.loc[frame["top"], "evidence"].min())
    below = frame[~frame["top"] & (frame["evidence"] > cut - 1.0)]
    missed = frame[frame["abuser"] & ~frame["top"]]
    return cut, int((~below["abuser"]).sum()), missed[missed["evidence"] > cut - 1.0]["who"].value_counts()


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", required=True, help="e.g. 600-611,700-711 (tuning seeds, below 1000)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the generated worlds (reused when there)")
    ap.add_argument("--accounts", type=int, default=3000)
    ap.add_argument("--merchants", type=int, default=120)
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    if any(s >= 1000 for s in seeds):
        ap.error("--seeds: tune on seeds below 1000; seeds from 1000 are for the final report")
    frames = []
    for seed in seeds:
        f = world_rows(seed, args.out, args.accounts, args.merchants)
        part = f[f["top"]]
        inn = part[~part["abuser"]]
        cut, near_innocent, near_missed = edge(f)
        print(f"seed {seed}: K {int(f['abuser'].sum())}, top-score part {len(part)} precision "
              f"{part['abuser'].mean():.3f}; innocents {len(inn)} "
              f"({', '.join(f'{k} {v}' for k, v in inn.groupby(['who', 'pattern']).size().items())}); "
              f"edge {cut:.2f}: {near_innocent} innocents and {int(near_missed.sum())} missed abusers "
              f"({', '.join(f'{k} {v}' for k, v in near_missed.items())}) within 1 below")
        frames.append(f)
    allf = pd.concat(frames)
    inn = allf[allf["top"] & ~allf["abuser"]]
    print(f"\n{len(seeds)} worlds: {len(inn)} innocent accounts in the top-score parts, by truth and ranking pattern:")
    print(inn.groupby(["who", "pattern"]).size().to_string())
    near = [edge(f) for f in frames]
    print(f"edge (within 1 unit below the cut): {sum(n[1] for n in near)} innocents, "
          f"{sum(int(n[2].sum()) for n in near)} missed abusers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
