"""The promotion gate's evidence: champion and challenger scored on the same held-out rows with the same metric.

A trainer builds an :class:`Evidence` from its own evaluation (the challenger's held-out rows, the split it used)
and passes it to :func:`training.registry.log_and_register`. The registry loads the current champion and calls
:meth:`Evidence.compare`, which scores the champion on exactly those rows (restricted to the rows the champion cannot
have trained on, when it was trained on the same data folder later than the held-out period starts) and re-scores
the challenger on the same rows; :func:`decide` then rules:

- no champion yet: promoted;
- the champion was scored: promoted when the challenger is at least as good on the metric (ties promote: the newer
  version has seen more recent data), refused otherwise;
- the champion cannot be scored (its logged signature no longer fits the features this code builds, it fails to
  load or to predict, or it trained on every held-out row): the fallback rule, promoted only when the challenger
  beats every baseline on its own held-out rows (strictly), refused otherwise; the reason says why the champion was
  not scored.

No MLflow here (the registry loads models and writes the decision); the decision's figures are written by the
registry as ``gate.*`` metrics and ``gate_*`` tags, and into the model card's "Promotion decision".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

# compare(champion_model, seen_until) -> (challenger value, champion value, rows description) on the same rows.
# ``seen_until``: the end of the champion's training data when it trained on this same data folder (rows up to then
# may be in its training set and must be left out), else None. Raise Unscorable to say the champion cannot be scored.
Compare = Callable[[Any, "pd.Timestamp | None"], tuple[float, float, str]]

FALLBACK_RULE = ("champion not scorable on these rows: promoted only if the challenger beats every baseline on its "
                 "own held-out rows")
EVIDENCE_RULE = "promoted when the challenger is at least as good as the champion on the same held-out rows"
MIN_ROWS_NOTE = "too few held-out rows left"


class Unscorable(Exception):
    """The champion cannot be scored on the challenger's rows; the message says why."""


@dataclass
class Evidence:
    """The challenger's held-out evaluation, and how to score another model on the same rows."""

    metric: str
    higher_is_better: bool
    value: float  # the challenger on its held-out rows
    baselines: dict[str, float]  # each baseline on the same rows, same metric
    rows: str  # what the held-out rows are, for people ("2,400 tickets created 2024-09-01..2024-12-31")
    compare: Compare | None = None
    data_source: str | None = None  # the resolved data folder the challenger trained on
    data_end: pd.Timestamp | None = None  # the last instant of its training data
    held_out_from: pd.Timestamp | None = None  # the first instant of the held-out period

    def better(self, a: float, b: float, strict: bool = False) -> bool:
        """Whether ``a`` is at least as good as ``b`` (``strict``: better) on this metric."""
        if self.higher_is_better:
            return a > b if strict else a >= b
        return a < b if strict else a <= b

    def tags(self) -> dict[str, str]:
        """What the next gate needs to know about this version's training data (model-version tags)."""
        out = {}
        if self.data_source:
            out["gate_data_source"] = self.data_source
        if self.data_end is not None:
            out["gate_data_end"] = pd.Timestamp(self.data_end).isoformat()
        if self.held_out_from is not None:
            out["gate_held_out_from"] = pd.Timestamp(self.held_out_from).isoformat()
        return out


@dataclass
class Decision:
    """What the gate decided and the figures it decided on."""

    promoted: bool
    reason: str
    rule: str
    challenger: float | None = None  # the challenger on the rows compared
    champion: float | None = None  # the champion on the same rows (None: not scored)
    rows: str = ""
    champion_version: int | None = None
    champion_scored: bool = False
    unscorable: str | None = None  # why the champion was not scored
    baselines: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``gate.*`` metrics for MLflow."""
        out = {"gate.promoted": float(self.promoted)}
        if self.challenger is not None:
            out["gate.challenger"] = self.challenger
        if self.champion is not None:
            out["gate.champion"] = self.champion
        for k, v in self.baselines.items():
            out[f"gate.baseline.{k}"] = v
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}

    def tags(self) -> dict[str, str]:
        """``gate_*`` tags for MLflow (run and model version)."""
        return {"gate_decision": "promoted" if self.promoted else "refused", "gate_rule": self.rule,
                "gate_rows": self.rows[:4000], "gate_champion_version": str(self.champion_version or ""),
                "gate_champion_scored": str(self.champion_scored).lower(),
                **({"gate_unscorable": self.unscorable[:4000]} if self.unscorable else {})}

    def card_lines(self, metric: str, higher_is_better: bool) -> list[str]:
        """Lines of the model card's "Promotion decision" section."""
        from training.model_card import fmt

        direction = "higher" if higher_is_better else "lower"
        out = [f"- metric: `{metric}` ({direction} is better)", f"- rule applied: {self.rule}"]
        if self.rows:
            out.append(f"- held-out rows compared: {self.rows}")
        if self.challenger is not None:
            out.append(f"- this version (challenger) on those rows: {fmt(self.challenger)}")
        if self.champion_version is not None:
            if self.champion_scored:
                out.append(f"- champion v{self.champion_version} on the same rows: {fmt(self.champion)}")
            else:
                out.append(f"- champion v{self.champion_version}: not scored ({self.unscorable})")
        for k, v in self.baselines.items():
            out.append(f"- baseline {k} on the challenger's held-out rows: {fmt(v)}")
        return out


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def decide(ev: Evidence, champion_version: int | None, champion_model: Any = None, seen_until=None,
           load_error: str | None = None) -> Decision:
    """The gate's ruling for challenger evidence ``ev`` against the champion (see the module docstring).

    ``champion_model``: the loaded champion (None with ``load_error`` when it could not be loaded or its signature
    no longer fits); ``seen_until``: the end of its training data when it trained on the same data folder.
    """
    m = ev.metric
    base = {k: float(v) for k, v in ev.baselines.items() if v is not None and math.isfinite(float(v))}
    if champion_version is None:
        # Something must be served; a first version that a baseline beats is still promoted, but the decision (and
        # so MLflow and the card) names the baselines that beat it, so nobody reads it as a win.
        beaten = [k for k, v in base.items() if not ev.better(ev.value, v, strict=True)]
        warn = ("; warning: " + ", ".join(f"{k} {_fmt(base[k])}" for k in beaten)
                + " is at least as good on the same held-out rows") if beaten else ""
        return Decision(True, f"promoted: no champion yet ({m}={_fmt(ev.value)} on {ev.rows}){warn}",
                        "no champion yet", ev.value, None, ev.rows, None, False, None, base)
    why = load_error
    if why is None and ev.compare is None:
        why = "this trainer gave no way to score another model on its held-out rows"
    if why is None:
        try:
            chal, champ, rows = ev.compare(champion_model, seen_until)
            if not (math.isfinite(chal) and math.isfinite(champ)):
                raise Unscorable(f"{m} is not finite on the rows left (challenger {chal}, champion {champ})")
        except Unscorable as e:
            why = str(e)
        except Exception as e:  # noqa: BLE001 — a champion that fails to predict is not scorable, not a crash
            why = f"the champion failed to score the rows ({type(e).__name__}: {e})"
    if why is None:
        ok = ev.better(chal, champ)
        verb = "promoted" if ok else "refused"
        cmp = "at least as good as" if ok else "worse than"
        reason = (f"{verb}: on the same held-out rows ({rows}) the challenger's {m} {_fmt(chal)} is {cmp} champion "
                  f"v{champion_version}'s {_fmt(champ)}")
        return Decision(ok, reason, EVIDENCE_RULE, chal, champ, rows, champion_version, True, None, base)
    beaten = [k for k, v in base.items() if not ev.better(ev.value, v, strict=True)]
    ok = not beaten and bool(base)
    if ok:
        verdict = (f"promoted: the challenger's {m} {_fmt(ev.value)} beats every baseline on its held-out rows ("
                   + ", ".join(f"{k} {_fmt(v)}" for k, v in base.items()) + ")")
    elif not base:
        verdict = "refused: no baseline figures to decide on"
    else:
        verdict = (f"refused: the challenger's {m} {_fmt(ev.value)} does not beat "
                   + ", ".join(f"{k} {_fmt(base[k])}" for k in beaten) + " on its held-out rows")
    reason = f"{verdict}; champion v{champion_version} could not be scored on them: {why}"
    return Decision(ok, reason, FALLBACK_RULE, ev.value, None, ev.rows, champion_version, False, why, base)


def check_seen(seen_until, times: pd.Series, min_rows: int, what: str = "rows") -> pd.Series:
    """Mask of the held-out rows (``times``) the champion cannot have trained on: after ``seen_until``.

    Raises :class:`Unscorable` when fewer than ``min_rows`` remain.
    """
    t = pd.to_datetime(times, utc=True)
    if seen_until is None:
        return pd.Series(True, index=times.index)
    seen = pd.Timestamp(seen_until)
    seen = seen.tz_localize("UTC") if seen.tzinfo is None else seen.tz_convert("UTC")
    mask = t > seen
    if int(mask.sum()) < min_rows:
        raise Unscorable(f"it trained on this data folder up to {seen:%Y-%m-%d %H:%M}, which covers the held-out "
                         f"period: {int(mask.sum())} of {len(t):,} held-out {what} are later than its training "
                         f"data ({MIN_ROWS_NOTE}, {min_rows} needed)")
    return mask
