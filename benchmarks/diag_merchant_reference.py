"""What the merchant section's ``latent_risk_reference`` knows that no ranker can, and a fair reference beside it.

``latent_risk_reference`` ranks by ``truth/merchants.parquet``'s ``complaint_risk``: the generator's expected
complaints per order line over the world's **last 180 days**, computed from its own probabilities *given what
happened* (whether each line was delivered late and by how much, returned as defective or lost, which tickets were
raised and how angry their customers were). The benchmark's label window is the world's last 60 days, so a third of
that average is the label window itself: the reference knows which of the coming orders will go wrong, which no
ranker as of the cut-off can. This script rebuilds the world of each kept benchmark seed (same seed and scenario, so
the same draws) to read those probabilities, and ranks the same merchants by

* ``last180``: the reference's formula on the world's last 180 days without its prior (checks the rebuild: it should
  score like ``latent_risk_reference``);
* ``asof180``: the same formula on the 180 days up to the cut-off: every probability the generator used, but only
  for what had happened by then (a fair "perfect denoiser of the past");
* ``state_asof``: complaint cases per line that each merchant's latent state on the cut-off day implies (its
  customers' readiness to complain, mean lateness, defect rate, the category's quality hazard and the complaint lag
  of a fresh trouble), with no realised outcome at all; escalations, most of the label, are left out;
* ``window``: the expected label itself (the same formula on the label window's lines and tickets): how far the
  label's coin flips alone keep any ranking from 1.0;

and the champion the run trained (``model``) and the last-60-day rate (the baseline every gain is over). Evaluation
only: the generator's internals are read here and nowhere in the model.

Usage: ``python benchmarks/diag_merchant_reference.py --bench /tmp/b700`` after ``aftersales benchmark-models
--worlds 12 --seed-base 700 --models merchant_risk --out /tmp/b700`` (tuning seeds only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

REFERENCES = ("latent_risk_reference", "last180", "asof180", "state_asof", "window")


def generator_internals(seed: int, accounts: int, merchants: int) -> dict:
    """The world of ``seed`` rebuilt, with the generator's merchants, lines and tickets (probabilities included)."""
    import features.synthetic as syn
    from features.scenarios import make_scenario

    box: dict = {}
    orig = syn._write_truth

    def grab(tdir, w, acc, mer, ln, tk, *rest):
        box.update(w=w, mer=mer, ln=ln, tk=tk)

    syn._write_truth = grab  # the truth writer receives every internal array: keep them instead of writing
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sc = make_scenario("random", seed)
            syn.generate_world(Path(tmp), seed=seed, accounts=accounts, merchants=merchants, progress=False,
                               scenario=sc)
    finally:
        syn._write_truth = orig
    box["sc"] = sc
    return box


def expected_per_line(box: dict, lo: int, hi: int):
    """Expected complaints per order line of lines and tickets with day index in [lo, hi): complaint cases from
    each line's probability plus escalations of the merchant's other cases (the truth file's formula)."""
    import numpy as np

    from features.synthetic_truth import _expected_complaints

    e, lines = _expected_complaints(box["mer"], box["ln"], box["tk"], lo, hi)
    return e / np.maximum(lines, 1)


def state_rate(box: dict, day: int):
    """Complaint cases per line each merchant's latent state on day index ``day`` implies (no realised outcome)."""
    import numpy as np

    from features.synthetic_truth import _implied_complaint_rate
    from features.synthetic_world import _merchant_state

    mer = box["mer"]
    m = np.arange(len(mer["size"]))
    late, defect, _, ramp = _merchant_state(mer, m, np.full(len(m), day))
    return ramp * _implied_complaint_rate(mer, late, defect, box["sc"])


def world_row(wdir: Path) -> dict:
    import numpy as np
    import pandas as pd
    from diag_merchant_top50 import world_frame

    from training.merchant_risk import ranking_metrics

    frame, truth, day, min_orders = world_frame(wdir)
    seed = int(wdir.name.split("_")[1])
    accounts = len(pd.read_parquet(wdir / "data" / "truth" / "accounts.parquet", columns=["account_id"]))
    box = generator_internals(seed, accounts, len(truth))
    w = box["w"]
    a = (day.tz_convert(None) - pd.Timestamp(w.start).tz_localize(None)).days  # the cut-off's day index
    code = frame["merchant_id"].astype(str).str.lstrip("M").astype(int).to_numpy()
    lines_now = int((box["ln"]["day"] <= a).sum())
    if lines_now == 0 or len(box["mer"]["size"]) != len(truth):
        raise SystemExit(f"{wdir}: the rebuilt world does not match the kept one")
    refs = {"latent_risk_reference": frame["latent"].to_numpy(float),
            "last180": expected_per_line(box, w.days - 180, w.days)[code],
            "asof180": expected_per_line(box, a - 179, a + 1)[code],
            "state_asof": state_rate(box, a)[code],
            "window": expected_per_line(box, a + 1, a + 61)[code]}
    part = frame.assign(**refs)
    row = {"world": wdir.name, "scored": int((frame["label_orders"] >= min_orders).sum())}
    for c in ("baseline_rate", "model", *REFERENCES):
        row[c] = ranking_metrics(part, c, min_orders).get("ndcg_at_50", np.nan)
    return row


def main(argv: list[str] | None = None) -> None:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, required=True, help="OUT folder of a benchmark-models run (worlds kept)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    worlds = sorted((args.bench / "worlds").glob("seed_*"), key=lambda p: int(p.name.split("_")[1]))
    worlds = [w for w in worlds if (w / "models_as_of").exists()]
    if not worlds:
        raise SystemExit(f"{args.bench}/worlds holds no finished seed_* folder: run benchmark-models --keep-worlds")
    rows = []
    for wdir in worlds:
        rows.append(world_row(wdir))
        print(f"  {wdir.name}: done", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).set_index("world")
    gain = table[["model", *REFERENCES]].sub(table["baseline_rate"], axis=0)
    pd.set_option("display.width", 200)
    print("NDCG@50 gain over the last-60-day complaint rate:")
    print(gain.round(3).to_string())
    print("median gain:", gain.median().round(3).to_dict())
    print("worlds at +0.08 or more:", (gain >= 0.08).sum().to_dict(), "of", len(gain))


if __name__ == "__main__":
    main()
