"""Which market's calendar a data folder follows, and whether its return peaks fit that calendar.

A data folder may carry ``dataset.json`` with its ``market`` (``features.scenarios`` writes it: the Online Retail
importer GB, ``generate`` the world's own). The commands resolve the market in this order: the
``--market`` option, ``AFTERSALES_MARKET`` when it is set, the folder's ``dataset.json``, then CN.

:func:`calendar_fit` scores how well a daily series' peaks fit each supported market's calendar: the mean lift
(log of the day over its centred four-week median) in the days just after the events only that market has
(public holidays, the Spring Festival): how far those days move from the series' centred four-week median, beyond
how far days usually move, against the spread of that movement. :func:`market_warning` names a
better market when the history fits another calendar clearly better than the one in use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.calendar import SUPPORTED_MARKETS, WINDOW_AFTER_DAYS, WINDOW_BEFORE_DAYS, market_events
from features.settings import Settings

DATASET_FILE = "dataset.json"
DEFAULT_MARKET = "CN"
AFTER_DAYS = 14  # days after an event whose lift counts toward the fit
MIN_Z = 1.5  # a better market must fit by this many standard errors (and this many more than the one in use) ...
OWN_Z = 1.0  # ... while the days after the events of the market in use move no more than this above usual


def read_dataset_info(data_dir: Path | str) -> dict:
    """The folder's ``dataset.json`` (features.scenarios writes it; empty when absent), its market checked."""
    from features.scenarios import DATASET_FILE as _FILE
    from features.scenarios import read_dataset_meta

    info = read_dataset_meta(data_dir)
    m = info.get("market")
    if m is not None and str(m).upper() not in SUPPORTED_MARKETS:
        raise ValueError(f"{Path(data_dir) / _FILE}: field market {m!r} is not a supported market "
                         f"({', '.join(SUPPORTED_MARKETS)})")
    return info


def resolve_market(option: str | None, settings: Settings, data_dir: Path | str | None) -> tuple[str, str]:
    """(market, where it came from): ``--market``, then AFTERSALES_MARKET when set, then the data folder's
    dataset.json, then CN."""
    if option:
        return str(option).upper(), "--market"
    if "market" in settings.model_fields_set:
        return str(settings.market).upper(), "AFTERSALES_MARKET"
    if data_dir is not None:
        m = read_dataset_info(data_dir).get("market")
        if m:
            return str(m).upper(), f"{Path(data_dir) / DATASET_FILE}"
    return DEFAULT_MARKET, "default"


def _specific_days(market: str, start: pd.Timestamp, end: pd.Timestamp, settings: Settings) -> pd.DatetimeIndex:
    """Days within AFTER_DAYS after events that only ``market`` has (not on the same date in every market)."""
    own = market_events(market, start, end, settings)
    shared, big = None, None
    for m in SUPPORTED_MARKETS:
        ev = market_events(m, start, end, settings)
        d, b = set(ev["date"]), set(ev.loc[ev["size"] >= 2, "date"])
        shared = d if shared is None else shared & d
        big = b if big is None else big & b
    out = set()
    for d in sorted(set(own["date"]) - (shared or set())):
        out.update(pd.date_range(d, d + pd.Timedelta(days=AFTER_DAYS), freq="D"))
    # Days in the after-sales windows of the big events every market shares (Christmas, Black Friday) tell no
    # market apart: Boxing Day is British, the Christmas return wave is everyone's.
    for d in big or set():
        out -= set(pd.date_range(d - pd.Timedelta(days=WINDOW_BEFORE_DAYS), d + pd.Timedelta(days=WINDOW_AFTER_DAYS)))
    return pd.DatetimeIndex(sorted(out))


def calendar_fit(y: pd.Series, settings: Settings | None = None) -> pd.DataFrame:
    """Per market: mean lift of the series on its market-specific event days, days, and z (lift / standard error
    of a mean of that many ordinary days). ``y``: a daily series indexed by day."""
    settings = settings or Settings()
    y = y.astype(float)
    base = y.rolling(29, center=True, min_periods=7).median()
    lift = np.log1p(y) - np.log1p(base)
    lift = lift.dropna()
    if lift.empty:
        return pd.DataFrame(columns=["market", "lift", "days", "z"])
    # A calendar fits when the days after its own events move (a wave or a shutdown): |lift| above its usual.
    size = lift.abs()
    usual, sd = float(size.mean()), float(size.std()) or 1e-9
    rows = []
    for m in SUPPORTED_MARKETS:
        days = _specific_days(m, lift.index[0], lift.index[-1], settings).intersection(lift.index)
        if len(days) == 0:
            rows.append({"market": m, "lift": 0.0, "days": 0, "z": 0.0})
            continue
        mean = float(size.loc[days].mean()) - usual
        rows.append({"market": m, "lift": mean, "days": len(days), "z": mean / (sd / np.sqrt(len(days)))})
    return pd.DataFrame(rows)


def market_warning(y: pd.Series, market: str, settings: Settings | None = None) -> str | None:
    """A warning naming the better market when ``y``'s peaks fit another market's calendar by MIN_Z standard
    errors more than ``market``'s while ``market``'s own events show no movement; else None."""
    fit = calendar_fit(y, settings).set_index("market")
    if fit.empty or market not in fit.index:
        return None
    best = fit["z"].idxmax()
    if (best == market or fit.loc[market, "z"] >= OWN_Z or fit.loc[best, "z"] < MIN_Z
            or fit.loc[best, "z"] - fit.loc[market, "z"] < MIN_Z):
        return None
    return (f"the history's return peaks fit the {best} calendar better than {market} (day-to-day movement {fit.loc[best, 'lift']:+.0%}"
            f" above usual after {best}-only events over {int(fit.loc[best, 'days'])} days, z {fit.loc[best, 'z']:.1f}; "
            f"{market}: {fit.loc[market, 'lift']:+.0%}, z {fit.loc[market, 'z']:.1f}): set --market {best} "
            f"(or AFTERSALES_MARKET, or \"market\" in the data folder's {DATASET_FILE})")
