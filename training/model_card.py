"""Model cards: one Markdown page per registered model version, for whoever must judge whether to trust it.

A model's ``train`` builds the card's content as a plain dict (:func:`new_card` plus the model's own figures) and
passes it to :func:`training.registry.log_and_register`, which adds what only registration knows (the version, the
promotion gate's decision) and renders it with :func:`render`. The card is logged to the version's MLflow run, set as
the registered version's description and written to ``models/cards/<model>/v<version>.md``.

Sections: what it predicts and for whom; the training data (folder, rows per table, period, validation and
rejects); the evaluation design (held-out later time); metrics against the baselines (each model value labelled
with the MLflow metric it was logged as); slices (holiday windows, new merchants, guest accounts, where they
apply, and why not where they do not); known limits; the promotion decision (champion and challenger on the
same held-out rows, see :mod:`training.evidence`).

No MLflow here: this module only builds text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from features.contract import Dataset

SECTIONS = ("What it predicts", "Training data", "Evaluation design", "Metrics against baselines", "Slices",
            "Known limits", "Promotion decision")
HOLIDAY_WINDOW_TEXT = ("holiday windows, i.e. 3 days before to 21 days after each major holiday or shopping event "
                       "of the market, as features.calendar.holiday_windows defines them")


def new_card(title: str, predicts: str, users: str, data: dict, evaluation: str) -> dict:
    """The card's skeleton: fill ``metrics``, ``slices``, ``not_applicable`` and ``limits`` afterwards."""
    return {"title": title, "predicts": predicts, "users": users, "data": data, "evaluation": evaluation,
            "metrics": None, "metrics_note": "", "slices": None, "slices_note": "", "not_applicable": {},
            "limits": []}


def data_summary(ds: Dataset, data_dir: Path | str, validated: bool = True, tables=None,
                 note: str = "") -> dict:
    """The training data as the card shows it: folder, period, rows in / accepted / rejected per table."""
    tables = [t for t in (tables or ds.reports) if t in ds.reports and ds.has(t)]
    rows = pd.DataFrame([{"table": t, "rows_in": ds.reports[t].rows_in, "accepted": ds.reports[t].accepted,
                          "rejected": ds.reports[t].rejected} for t in tables])
    first, last = ds.time_span()
    folder = Path(data_dir).resolve()
    return {"folder": str(folder), "first_day": str(first.date()), "last_day": str(last.date()),
            "days": int((last - first).days) + 1, "tables": rows, "rejected": int(rows["rejected"].sum()),
            "validated": bool(validated), "synthetic": (folder / "truth").is_dir(), "note": note}


def in_holiday_windows(times: pd.Series, market: str, settings=None) -> pd.Series:
    """Whether each (UTC) timestamp falls on a day inside a holiday window of ``market`` (see HOLIDAY_WINDOW_TEXT)."""
    from features.calendar import holiday_windows, in_windows

    days = pd.to_datetime(times, utc=True).dt.tz_localize(None).dt.normalize()
    inside = pd.Series(False, index=times.index)
    if days.notna().any():
        hw = holiday_windows(market, days.min() - pd.Timedelta(days=30), days.max(), settings)
        inside[:] = in_windows(days, hw)
    return inside


def first_seen(times: pd.Series, keys: pd.Series) -> pd.Series:
    """First timestamp of each key (e.g. a merchant's first order in the data)."""
    frame = pd.DataFrame({"k": keys.astype("string"), "t": pd.to_datetime(times, utc=True)}).dropna()
    return frame.groupby("k")["t"].min()


# --------------------------------------------------------------------------------------------------------------------
# Rendering


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: integers with thousands separators, floats with ``digits`` decimals, missing as an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b":
        return "yes" if value else "no"
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return f"{int(value):,}"
    if isinstance(value, float) or hasattr(value, "dtype"):
        try:
            f = float(value)
        except (TypeError, ValueError):
            return str(value)
        if not math.isfinite(f):
            return "—"
        return f"{f:.{digits}f}"
    if value is pd.NA or value is pd.NaT:
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (index dropped)."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


def render(card: dict, name: str, version: int, *, promoted: bool, reason: str, champion_version: int | None,
           champion_value: float | None, primary_metric: str, higher_is_better: bool,
           run_id: str | None = None, registered_at: str | None = None, decision: list[str] | None = None) -> str:
    """The card as Markdown."""
    data = card["data"]
    out = [f"# Model card: {card['title']} — `{name}` version {version}", ""]
    stamp = [f"registered {registered_at}" if registered_at else "", f"MLflow run `{run_id}`" if run_id else ""]
    if any(stamp):
        out += ["_" + ", ".join(s for s in stamp if s) + "._", ""]
    status = "**Champion**" if promoted else "**Not champion**"
    out += [f"{status}: {reason}.", ""]

    out += ["## What it predicts", "", card["predicts"], "", f"**For whom:** {card['users']}", ""]

    out += ["## Training data", ""]
    kind = "synthetic world (ground truth in truth/)" if data.get("synthetic") else "data folder"
    out += [f"- {kind}: `{data['folder']}`",
            f"- period seen: {data['first_day']} to {data['last_day']} ({data['days']:,} days)",
            f"- input contract: {'passed' if data['validated'] else 'FAILED (this version cannot be promoted)'}; "
            f"{data['rejected']:,} rows rejected (written to the command's rejects.csv)"]
    if data.get("note"):
        out.append(f"- {data['note']}")
    out += ["", markdown_table(data["tables"]), ""]

    out += ["## Evaluation design", "", card["evaluation"], ""]

    out += ["## Metrics against baselines", ""]
    direction = "higher" if higher_is_better else "lower"
    out += [f"Promotion metric: `{primary_metric}` ({direction} is better). Each metric's name carries the MLflow "
            "metric the model's value was logged as; all figures are on held-out later time.", ""]
    if card.get("metrics") is not None and len(card["metrics"]):
        out += [markdown_table(card["metrics"]), ""]
    if card.get("metrics_note"):
        out += [card["metrics_note"], ""]

    out += ["## Slices", ""]
    if card.get("slices_note"):
        out += [card["slices_note"], ""]
    slices = card.get("slices")
    if isinstance(slices, pd.DataFrame):
        slices = [("", slices)]
    for caption, frame in slices or []:  # one table, or several (caption, table) pairs
        if caption:
            out += [caption, ""]
        out += [markdown_table(frame), ""]
    for slice_name, why in card.get("not_applicable", {}).items():
        out.append(f"- {slice_name}: not applicable. {why}")
    if card.get("not_applicable"):
        out.append("")

    out += ["## Known limits", ""]
    out += [f"- {line}" for line in card.get("limits", [])] or ["- none recorded"]
    out.append("")

    out += ["## Promotion decision", ""]
    out.append(f"- decision: {'promoted to champion' if promoted else 'not promoted'} — {reason}")
    out += decision or []
    if champion_version is not None:
        value = fmt(champion_value) if champion_value is not None else "—"
        out.append(f"- champion after the gate: version {champion_version} ({primary_metric} {value})")
    else:
        out.append("- champion after the gate: none")
    if decision:
        out.append("- rule: a version becomes champion only when its data passed the input contract and, on the "
                   f"challenger's held-out rows, its {primary_metric} is at least as good as the champion's on the "
                   "same rows; when the champion cannot be scored there (signature no longer fits, load fails, or "
                   "it trained on those rows), only if it beats every baseline on them. The alias moves by "
                   "compare-and-set: a concurrent promotion makes this one refuse.")
    else:
        out.append("- rule: a version becomes champion only when its data passed the input contract and it is "
                   f"strictly better than the current champion on {primary_metric}.")
    return "\n".join(out) + "\n"


def summary(text: str, limit: int = 4800, pointer: str = "") -> str:
    """The card cut to ``limit`` characters at a section boundary (MLflow stores at most 5,000 per description)."""
    if len(text) <= limit:
        return text
    tail = f"\n\n_(cut; full card: {pointer})_\n" if pointer else "\n\n_(cut)_\n"
    cut = text[:limit - len(tail)]
    at = cut.rfind("\n## ")
    return (cut[:at] if at > 0 else cut) + tail
