"""Scenarios: every mechanic of a synthetic world as one set of drawn values (the world family).

``default_scenario()`` holds the values the generator always used (so the default world keeps its bytes);
``random_scenario(seed)`` draws each mechanic independently from the wide documented ranges in ``RANGES``; a named
scenario is a random draw with a few mechanics pinned (``NAMED``). ``features.synthetic.generate_world`` takes a
scenario and writes its values to ``truth/scenario.json`` and a table (mechanic, documented range, value drawn) to
``truth/README.md``; ``dataset.json`` at the world's root carries the market for the commands that read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from features.calendar import SUPPORTED_MARKETS

CATEGORIES = ("apparel", "shoes", "electronics", "home", "beauty", "toys", "books", "grocery")
PATTERN_NAMES = ("serial", "wardrobing", "refund_without_return", "ring")
EVENTS = ("singles_day", "black_friday", "mid_year_618", "cyber_monday", "double_12", "summer_sale")
DELAY_SHAPES = ("lognormal", "gamma", "mixture")
ESCALATION_DRIVERS = ("merchant", "attitude", "amount", "lateness", "repeat", "abuser", "peak_load", "wording")
CASE_TYPES = ("return", "refund", "exchange", "complaint", "logistics", "quality", "inquiry", "other")
CHANNELS = ("chat", "phone", "email", "app", "other")
DATASET_FILE = "dataset.json"

# Angry wording: per world a handful of phrases is drawn from this grammar (tens of thousands of phrasings, in
# different styles), so no fixed keyword list covers every world.
_OPENERS = ("This is", "Honestly this is", "Frankly, this is", "Your service is", "What you did is",
            "This whole thing is", "Your shop is", "This experience is", "The way you treat customers is",
            "This company is", "Your support is", "Such behaviour is", "This situation is", "It is")
_JUDGEMENTS = ("unacceptable", "a disgrace", "outrageous", "ridiculous", "a joke", "appalling", "shameful",
               "scandalous", "pathetic", "beyond belief", "absurd", "insulting", "terrible", "disgusting",
               "infuriating", "a total scam", "criminal", "the worst I have seen", "a nightmare", "unbelievable",
               "a rip-off", "useless", "a farce", "incompetent", "dishonest")
_THREATS = ("I will contact my lawyer", "I am reporting you to consumer protection",
            "I will leave a one-star review everywhere", "I will dispute the charge with my bank",
            "I am going to the press", "I will never buy here again", "I'm filing a chargeback",
            "expect to hear from my solicitor", "I will tell everyone to avoid you", "I demand to speak to a manager",
            "I want a supervisor NOW", "escalate this immediately", "I am cancelling my membership",
            "I will post this on social media", "the regulator will hear about this", "see you in small claims court",
            "I am done with this platform", "last warning before I go public")
_DEMANDS = ("I want my money back now", "refund me today", "fix this immediately", "give me a refund right now",
            "sort this out today", "I expect compensation", "pay me back at once", "I want this resolved today",
            "answer me properly this time", "stop ignoring me", "do your job", "I expect an apology and a refund")
_REPEATS = ("This is the third time I contact you.", "I have written to you three times already.",
            "Nobody answered my last messages.", "Still waiting after my previous tickets.",
            "I already called twice about this.", "Again no reply to my earlier emails.",
            "How many times do I have to ask?", "Writing again because nobody helped.")

# Documented range of each drawn mechanic (shown in truth/README.md beside the value drawn).
RANGES: dict[str, str] = {
    "market": "one of CN, US, GB, DE, BR (holiday calendar of `features.calendar`)",
    "days": "13 to 36 months (395-1095 days), ending 40-120 days after the last Christmas",
    "growth_before": "-10% to +80% a year (order volume trend before the break)",
    "growth_after": "-10% to +80% a year (after the break)",
    "growth_break": "30% to 80% into the history",
    "weekly": "Mon..Sun multipliers: lognormal noise sigma 0.06 plus a weekend effect -15%..+30%",
    "event_peaks": "per event x1.1-x6 (absent = 1.0); 11.11, 618, 12.12 often absent outside CN",
    "xmas_ramp": "Christmas gift run-up over Dec 1-22: +10% to +250% by Dec 22",
    "holiday_instability": "0.02 (near-identical years) to 0.6 (years that change): per-instance event size "
                           "+-s, per-year Christmas ramp and gift share +-s",
    "daily_noise": "daily demand shock sigma 0.03-0.15",
    "cat_fit": "size/fit return hazard per category: default x0.2-x2.5 (apparel, shoes only)",
    "cat_mind": "change-of-mind return hazard per category: default x0.2-x2.5",
    "cat_quality": "quality return hazard per category: default x0.3-x2.5",
    "delay_mean": "mean delivery-to-request days of change-of-mind/fit returns per category: 3-30",
    "delay_shape": "per category: lognormal, gamma or a fast/slow mixture",
    "delay_spread": "lognormal sigma 0.3-1.0 / gamma shape 0.8-6 / mixture fast share 0.2-0.8",
    "gift_share": "share of pre-Christmas December lines that are gifts: 0.05-0.8",
    "gift_mult": "return hazard multiplier of unwanted gifts: x1.0-x3.5 (post-holiday wave weak..strong)",
    "wave_median": "median days after Dec 26 of gift returns: 3-25",
    "weekend_wait": "share of weekend return requests waiting until Monday: 0-0.5",
    "abuse_share": "abusive accounts 0.5%-4% in total, split over patterns by a flat Dirichlet",
    "ring_size": "accounts per ring: from 2..6 up to 4..15",
    "ring_shared": "identifiers a ring shares: any non-empty subset of address/device/payment",
    "ring_share_p": "per shared identifier, the share of members using the ring's value: 0.5-1.0",
    "late_start": "share of abusers who start later in the history: 0.2-0.9",
    "heavy_buyer_share": "share of abusers who also buy a lot: 0-0.6",
    "heavy_buyer_mult": "their extra ordering: x1.5-x5",
    "serial_after_mult": "serial returners' ordering after onset: x1.2-x4",
    "serial_mind": "serial returners' change-of-mind return floor per line: 0.2-0.7",
    "rwr_claim": "refund-without-return false claims per delivered line: 0.06-0.35",
    "ring_mult": "ring members' return multiplier: x1.3-x3",
    "risky_incumbent": "risky share of incumbent merchants: 3%-15%",
    "risky_new": "risky share of newcomer merchants: 5%-30%",
    "deteriorate_share": "risky merchants that deteriorate (flat Dirichlet with stable and recovering)",
    "recover_share": "risky merchants that recover (bad at first, fine after a day 30-85% into the history)",
    "complaint_lag": "days for complaints to reach their full rate after trouble starts: 5-90",
    "complaint_delay": "median days from the problem to the complaint: 2-20",
    "escalation_rate": "share of tickets escalated: 5%-25%",
    "case_logit": "per case type: N(0, 0.8) log-odds",
    "channel_logit": "per channel: N(0, 0.4) log-odds",
    "esc_weights": "per driver (merchant, attitude, amount, lateness, repeat, abuser, peak load, wording): "
                   "default weight x0-x2.5",
    "anger_text_slope": "how strongly anger shows in wording: 0.3-2.5",
    "angry_phrases": "4-30 phrases drawn from a grammar of openers x judgements, threats, demands, styles",
    "repeat_phrases": "1-4 phrasings of a repeat contact",
}


@dataclass(frozen=True)
class Scenario:
    """The values of every mechanic of one world. Defaults are the default world's."""

    name: str = "default"
    seed: int | None = None
    market: str = "CN"
    start: str = "2023-01-01"
    days: int = 730
    growth_before: float | None = None  # None: the default world's growth (accounts joining over time)
    growth_after: float | None = None
    growth_break: float | None = None
    weekly: tuple[float, ...] = (1.0, 0.97, 0.97, 1.0, 1.06, 1.14, 1.12)
    event_peaks: dict[str, float] = field(default_factory=lambda: {
        "singles_day": 5.0, "black_friday": 4.0, "mid_year_618": 3.2, "cyber_monday": 2.5, "double_12": 2.0,
        "summer_sale": 1.5})
    event_jitter: tuple[float, float] = (0.8, 1.2)
    xmas_ramp: float = 0.7
    holiday_instability: float | None = None  # None: default (per-event jitter only)
    daily_noise: float = 0.07
    cat_fit: tuple[float, ...] = (0.14, 0.11, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    cat_mind: tuple[float, ...] = (0.075, 0.055, 0.05, 0.04, 0.03, 0.05, 0.025, 0.004)
    cat_quality: tuple[float, ...] = (0.02, 0.02, 0.035, 0.025, 0.015, 0.025, 0.01, 0.007)
    delay_mean: tuple[float, ...] | None = None  # None: lognormal around the category median (sigma 0.5)
    delay_shape: tuple[str, ...] | None = None
    delay_spread: tuple[float, ...] | None = None
    gift_share: float = 0.6
    gift_mult: float = 2.0
    wave_median: float = 8.0
    weekend_wait: float = 0.2
    abuse_share: dict[str, float] = field(default_factory=lambda: {
        "serial": 0.012, "wardrobing": 0.008, "refund_without_return": 0.006, "ring": 0.009})
    ring_size: tuple[int, int] = (4, 8)
    ring_shared: tuple[str, ...] = ("address", "device", "payment")
    ring_share_p: tuple[float, float, float] = (0.55, 0.9, 0.65)
    late_start: float = 0.55
    heavy_buyer_share: float = 0.0
    heavy_buyer_mult: float = 1.0
    serial_after_mult: float = 2.5
    serial_mind: float = 0.45
    rwr_claim: float = 0.22
    ring_mult: float = 2.0
    risky_incumbent: float = 0.08
    risky_new: float = 0.18
    deteriorate_share: float = 1 / 3
    recover_share: float = 0.0
    complaint_lag: float = 42.0
    complaint_delay: float = 6.0
    escalation_rate: float = 0.12
    case_logit: tuple[float, ...] = (0.0, 0.4, -0.2, 1.3, 0.3, 0.6, -1.1, -0.5)
    channel_logit: tuple[float, ...] = (0.0, 0.45, 0.1, -0.2, 0.0)
    esc_weights: dict[str, float] = field(default_factory=lambda: {
        "merchant": 0.9, "attitude": 0.5, "amount": 0.35, "lateness": 0.12, "repeat": 0.5, "abuser": 0.9,
        "peak_load": 0.8, "wording": 0.8})
    anger_text_slope: float = 1.3
    angry_phrases: tuple[str, ...] = (" This is unacceptable!", " I will contact my lawyer.", " Worst service ever.",
                                      " I want my money back now!")
    repeat_phrases: tuple[str, ...] | None = None  # None: the default world's two phrases

    @property
    def is_default(self) -> bool:
        return self.name == "default"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scenario:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"scenario: unknown field(s) {sorted(unknown)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)


def default_scenario(market: str = "CN", start: str = "2023-01-01", days: int = 730) -> Scenario:
    return Scenario(market=market, start=start, days=days)


def _angry_phrases(rng: np.random.Generator) -> tuple[str, ...]:
    k = int(rng.integers(4, 31))
    styles = rng.random(3)  # upper-case share, multi-exclamation share, no-punctuation share of this world
    out: list[str] = []
    for _ in range(k):
        kind = rng.choice(3, p=[0.45, 0.3, 0.25])
        if kind == 0:
            s = f"{_OPENERS[rng.integers(len(_OPENERS))]} {_JUDGEMENTS[rng.integers(len(_JUDGEMENTS))]}"
        elif kind == 1:
            s = _THREATS[rng.integers(len(_THREATS))]
        else:
            s = _DEMANDS[rng.integers(len(_DEMANDS))]
        s = s[0].upper() + s[1:]
        r = rng.random()
        if r < styles[0] * 0.5:
            s = s.upper()
        r = rng.random()
        end = "" if r < styles[2] * 0.4 else ("!!!" if r < styles[1] * 0.8 + 0.2 else rng.choice([".", "!"]))
        out.append(" " + s + end)
    return tuple(dict.fromkeys(out))


def _end_date(rng: np.random.Generator) -> pd.Timestamp:
    return pd.Timestamp("2024-12-25") + pd.Timedelta(days=int(rng.integers(40, 121)))


def random_scenario(seed: int, market: str | None = None, days: int | None = None, start: str | None = None,
                    name: str = "random") -> Scenario:
    """Draw every mechanic independently from ``RANGES`` (its own random stream, not the world's)."""
    rng = np.random.default_rng([int(seed), 14])
    d = default_scenario()
    u = rng.uniform
    # Every value is drawn even when pinned, so pinning one mechanic leaves the others' draws unchanged.
    mk, n_days, end = str(rng.choice(SUPPORTED_MARKETS)), int(rng.integers(395, 1096)), _end_date(rng)
    mk = market.upper() if market else mk
    n_days = int(days) if days else n_days
    st = start or str((end - pd.Timedelta(days=n_days)).date())
    weekend = u(-0.15, 0.30)
    weekly = np.exp(rng.normal(0, 0.06, 7)) * np.array([1, 1, 1, 1, 1, 1 + weekend, 1 + weekend])
    weekly = tuple(float(round(x, 4)) for x in weekly / weekly.mean())
    asia = mk == "CN"
    present = {"singles_day": 0.95 if asia else 0.3, "black_friday": 0.5 if asia else 0.95,
               "mid_year_618": 0.9 if asia else 0.35, "cyber_monday": 0.4 if asia else 0.8,
               "double_12": 0.8 if asia else 0.3, "summer_sale": 0.6}
    peak_range = {"singles_day": (1.5, 6.0), "black_friday": (1.3, 5.0), "mid_year_618": (1.3, 4.0),
                  "cyber_monday": (1.1, 3.0), "double_12": (1.1, 2.5), "summer_sale": (1.1, 2.0)}
    peaks = {}
    for ev in EVENTS:
        lo, hi = peak_range[ev]
        on, size = rng.random() < present[ev], u(lo, hi)
        peaks[ev] = float(round(size, 3)) if on else 1.0
    instab = float(round(np.exp(u(np.log(0.02), np.log(0.6))), 4))
    cat_mult = lambda lo, hi: np.exp(u(np.log(lo), np.log(hi), 8))  # noqa: E731
    level = u(0.6, 1.5)
    cat_fit = tuple(float(round(x, 5)) for x in np.array(d.cat_fit) * cat_mult(0.2, 2.5) * level)
    cat_mind = tuple(float(round(x, 5)) for x in np.array(d.cat_mind) * cat_mult(0.2, 2.5) * level)
    cat_quality = tuple(float(round(x, 5)) for x in np.array(d.cat_quality) * cat_mult(0.3, 2.5))
    shapes = tuple(str(s) for s in rng.choice(DELAY_SHAPES, 8))
    spread = []
    for s in shapes:
        spread.append(u(0.3, 1.0) if s == "lognormal" else u(0.8, 6.0) if s == "gamma" else u(0.2, 0.8))
    total_abuse = u(0.005, 0.04)
    mix = rng.dirichlet(np.ones(4))
    abuse = {p: float(round(total_abuse * m, 5)) for p, m in zip(PATTERN_NAMES, mix, strict=True)}
    r_lo = int(rng.integers(2, 7))
    r_hi = int(rng.integers(max(r_lo, 4), 16))
    subsets = [s for k in (1, 2, 3) for s in _subsets(("address", "device", "payment"), k)]
    shared = subsets[int(rng.integers(len(subsets)))]
    dyn = rng.dirichlet(np.ones(3))  # stable, deteriorating, recovering
    weights = {k: float(round(v * u(0.0, 2.5), 4)) for k, v in d.esc_weights.items()}
    repeats = tuple(str(s) for s in rng.choice(_REPEATS, int(rng.integers(1, 5)), replace=False))
    sc = Scenario(
        name=name, seed=int(seed), market=mk, start=st, days=n_days,
        growth_before=float(round(u(-0.10, 0.80), 4)), growth_after=float(round(u(-0.10, 0.80), 4)),
        growth_break=float(round(u(0.3, 0.8), 3)),
        weekly=weekly, event_peaks=peaks, event_jitter=(1 - instab, 1 + instab),
        xmas_ramp=float(round(u(0.1, 2.5), 3)), holiday_instability=instab,
        daily_noise=float(round(u(0.03, 0.15), 4)),
        cat_fit=cat_fit, cat_mind=cat_mind, cat_quality=cat_quality,
        delay_mean=tuple(float(round(x, 2)) for x in u(3, 30, 8)), delay_shape=shapes,
        delay_spread=tuple(float(round(x, 3)) for x in spread),
        gift_share=float(round(u(0.05, 0.8), 3)), gift_mult=float(round(u(1.0, 3.5), 3)),
        wave_median=float(round(u(3, 25), 2)), weekend_wait=float(round(u(0, 0.5), 3)),
        abuse_share=abuse, ring_size=(r_lo, r_hi), ring_shared=shared,
        ring_share_p=tuple(float(round(x, 3)) for x in u(0.5, 1.0, 3)),
        late_start=float(round(u(0.2, 0.9), 3)), heavy_buyer_share=float(round(u(0, 0.6), 3)),
        heavy_buyer_mult=float(round(u(1.5, 5.0), 3)), serial_after_mult=float(round(u(1.2, 4.0), 3)),
        serial_mind=float(round(u(0.2, 0.7), 3)), rwr_claim=float(round(u(0.06, 0.35), 3)),
        ring_mult=float(round(u(1.3, 3.0), 3)),
        risky_incumbent=float(round(u(0.03, 0.15), 4)), risky_new=float(round(u(0.05, 0.30), 4)),
        deteriorate_share=float(round(dyn[1], 4)), recover_share=float(round(dyn[2], 4)),
        complaint_lag=float(round(u(5, 90), 1)), complaint_delay=float(round(u(2, 20), 2)),
        escalation_rate=float(round(u(0.05, 0.25), 4)),
        case_logit=tuple(float(round(x, 3)) for x in rng.normal(0, 0.8, 8)),
        channel_logit=tuple(float(round(x, 3)) for x in rng.normal(0, 0.4, 5)),
        esc_weights=weights, anger_text_slope=float(round(u(0.3, 2.5), 3)),
        angry_phrases=_angry_phrases(rng), repeat_phrases=repeats,
    )
    return sc


def _subsets(items: tuple[str, ...], k: int) -> list[tuple[str, ...]]:
    from itertools import combinations

    return list(combinations(items, k))


# Named scenarios: a random draw (from the given seed) with a few mechanics pinned.
NAMED: dict[str, dict] = {
    "us-christmas": {"market": "US", "xmas_ramp": 2.0, "gift_mult": 3.0, "gift_share": 0.7,
                     "event_peaks": {"singles_day": 1.0, "black_friday": 4.0, "mid_year_618": 1.0,
                                     "cyber_monday": 2.5, "double_12": 1.0, "summer_sale": 1.0}},
    "stable-years": {"holiday_instability": 0.02, "event_jitter": (0.98, 1.02), "daily_noise": 0.03},
    "changing-years": {"holiday_instability": 0.6, "event_jitter": (0.4, 1.6), "daily_noise": 0.15},
    "ring-heavy": {"abuse_share": {"serial": 0.003, "wardrobing": 0.002, "refund_without_return": 0.002,
                                   "ring": 0.03}, "ring_size": (8, 15)},
    "deteriorating-merchants": {"risky_incumbent": 0.12, "risky_new": 0.25, "deteriorate_share": 0.8,
                                "recover_share": 0.1, "complaint_lag": 80.0},
}
SCENARIO_CHOICES = ("default", "random", *NAMED)


def make_scenario(name: str, seed: int, market: str | None = None, days: int | None = None,
                  start: str | None = None) -> Scenario:
    """The scenario called ``name`` (default, random or one of ``NAMED``) for ``seed``."""
    if name == "default":
        return default_scenario(market or "CN", start or "2023-01-01", int(days or 730))
    if name == "random":
        return random_scenario(seed, market, days, start)
    if name not in NAMED:
        raise ValueError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIO_CHOICES)}")
    pins = dict(NAMED[name])
    sc = random_scenario(seed, market or pins.get("market"), days, start, name=name)
    pins.pop("market", None)
    if "holiday_instability" in pins and "event_jitter" not in pins:
        s = pins["holiday_instability"]
        pins["event_jitter"] = (1 - s, 1 + s)
    return replace(sc, **pins)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (tuple, list)):
        return ", ".join(_fmt(x) for x in v) if len(v) < 12 else f"{len(v)} values: " + " | ".join(
            str(x).strip() for x in v[:6]) + " | ..."
    return "default" if v is None else str(v)


def readme_table(sc: Scenario) -> str:
    """Markdown table: mechanic, documented range, value drawn for this world."""
    rows = ["| mechanic | documented range | value in this world |", "|---|---|---|"]
    d = sc.to_dict()
    for key, rng_text in RANGES.items():
        val = d.get(key)
        if key == "angry_phrases" or key == "repeat_phrases":
            val = " / ".join(str(x).strip() for x in (val or ())) or "default"
        rows.append(f"| {key} | {rng_text} | {_fmt(val).replace('|', '/')} |")
    return "\n".join(rows)


def write_scenario_files(out: Path, sc: Scenario, seed: int, end: pd.Timestamp) -> None:
    """truth/scenario.json (all values) and dataset.json (what the commands read: market, span, source)."""
    (out / "truth" / "scenario.json").write_text(json.dumps(sc.to_dict(), indent=1), encoding="utf-8")
    meta = {"source": "synthetic", "generator": "features.synthetic.generate_world", "scenario": sc.name,
            "seed": int(seed), "market": sc.market, "start": str(pd.Timestamp(sc.start).date()),
            "end": str(end.date()), "days": int(sc.days)}
    write_dataset_meta(out, meta)


def write_dataset_meta(out: Path | str, meta: dict) -> Path:
    """Write a data folder's dataset.json (source, market, span): the commands read the market from it."""
    p = Path(out) / DATASET_FILE
    p.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return p


def read_dataset_meta(data_dir: Path | str) -> dict:
    """The data folder's dataset.json (empty dict when absent)."""
    p = Path(data_dir) / DATASET_FILE
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e


def dataset_market(data_dir: Path | str, fallback: str | None = None) -> str | None:
    """The market named in the data folder's dataset.json, else ``fallback``."""
    m = read_dataset_meta(data_dir).get("market")
    return str(m).upper() if m else fallback
