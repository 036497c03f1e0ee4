"""`aftersales report`: one self-contained HTML file with every model's plots and tables, checked in headless
Chromium (the browser decodes every inline plot; the report's own script counts them onto <body>)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pandas as pd
import pytest
from click.testing import CliRunner

from features.settings import get_settings
from training import views
from training.cli import main
from training.report import render

FAST_ENV = {"AFTERSALES_RETURN_VOLUME_HORIZON": "28", "AFTERSALES_RETURN_VOLUME_BACKTEST_ORIGINS": "2",
            "AFTERSALES_RETURN_VOLUME_PEERS": "false", "AFTERSALES_MERCHANT_MIN_LABEL_ORDERS": "10"}
SECTIONS = ("return-volume", "serial-returners", "merchant-risk", "ticket-triage")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium on PATH: install the Debian packages `chromium chromium-driver` "
                "(`apt-get install -y chromium chromium-driver`; .ci/run installs them where missing)")


class _Doc(HTMLParser):
    """Ids, in-page links, plots (with their captions), tables (as DataFrames of text) and external references."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.plots, self.external = set(), [], [], []
        self.body: dict[str, str] = {}
        self._rows: list[list[str]] | None = None
        self._cell: str | None = None
        self._caption: str | None = None
        self.frames: list[pd.DataFrame] = []

    @property
    def tables(self) -> int:
        return len(self.frames)

    def table(self, column: str) -> pd.DataFrame:
        """The first table with this column."""
        found = [f for f in self.frames if column in f.columns]
        assert found, f"no table with a column {column!r}"
        return found[0]

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        if tag == "body":
            self.body = a
        if tag == "img" and "plot" in a.get("class", ""):
            self.plots.append({"alt": a.get("alt", ""), "src": a.get("src", ""), "caption": ""})
        if tag == "figcaption":
            self._caption = ""
        if tag == "table" and "data" in a.get("class", ""):
            self._rows = []
        if tag == "tr" and self._rows is not None:
            self._rows.append([])
        if tag in ("td", "th") and self._rows is not None:
            self._cell = ""
        for attr in ("src", "href"):
            if re.match(r"^(https?:)?//", a.get(attr, "") or ""):
                self.external.append(a[attr])
        if tag == "link":
            self.external.append(str(a))

    def handle_data(self, data):
        if self._caption is not None:
            self._caption += data
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "figcaption" and self.plots:
            self.plots[-1]["caption"] = self._caption.strip()
            self._caption = None
        if tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append(self._cell.strip())
            self._cell = None
        if tag == "table" and self._rows is not None:
            self.frames.append(pd.DataFrame(self._rows[1:], columns=self._rows[0]))
            self._rows = None


def parse(text: str) -> _Doc:
    doc = _Doc()
    doc.feed(text)
    return doc


@pytest.fixture(scope="module")
def built(tmp_path_factory, world_factory):
    """The report on a small world with nothing registered (command run as a user runs it)."""
    root = tmp_path_factory.mktemp("report")
    world = world_factory(**views.SMALL_WORLD)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFTERSALES_MODELS_DIR", str(root / "models"))
        for k, v in FAST_ENV.items():
            mp.setenv(k, v)
        get_settings.cache_clear()
        result = CliRunner().invoke(main, ["report", "--data", str(world), "--out", str(root / "out")])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"root": root, "world": world, "html": root / "out" / "report.html", "output": result.output}


def test_help_explains_the_command():
    result = CliRunner().invoke(main, ["report", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for word in ("--data", "--out", "--model", "champion", "held-out", "staffing plan", "review queue"):
        assert word in text


def test_shows_progress_and_where_it_wrote(built):
    out = built["output"]
    for step in ("[1/4] holiday return volume", "[2/4] serial returners", "[3/4] merchant complaint risk",
                 "[4/4] ticket triage"):
        assert step in out
    assert f"wrote {built['html']}" in out
    assert "rows rejected by the input contract" in out
    assert (built["html"].parent / "rejects.csv").exists()


def test_report_is_one_self_contained_file_with_contents_and_captions(built):
    text = built["html"].read_text(encoding="utf-8")
    doc = parse(text)
    assert not doc.external, f"the report must open without a network: {doc.external[:3]}"
    assert all(s in doc.ids for s in SECTIONS)
    assert set(doc.links) <= doc.ids, "table of contents links to missing anchors"
    assert len(doc.links) >= 25
    assert len(doc.plots) >= 10 and all(p["src"].startswith("data:image/png;base64,") for p in doc.plots)
    assert all(len(p["caption"]) > 40 for p in doc.plots), "every plot needs a caption saying how to read it"
    assert doc.tables >= 10
    assert str(built["world"].resolve()) in text and "UTC" in text
    assert "none registered" in text
    assert 'class="error"' not in text, "a section failed on a world that supports every model"


def test_report_holds_the_operational_tables(built):
    text = built["html"].read_text(encoding="utf-8")
    doc = parse(text)
    # The staffing plan for the next major event: the small world ends three weeks before 11.11.
    assert "the next major event, singles_day on 2024-11-11" in text
    staffing = doc.table("agents P50 total")
    assert staffing["date"].iloc[0].startswith("2024-11-08") and staffing["date"].iloc[-1].startswith("2024-12-02")
    p50, p90 = staffing["agents P50 total"].astype(float), staffing["agents P90 total"].astype(float)
    # Per day the P90 plan may dip below P50 (deferred work done ahead the day before); over the window it can't.
    assert len(staffing) >= 20 and p90.sum() >= p50.sum() and (p50 > 0).all()
    assert (staffing["contacts P90"].astype(float) >= staffing["contacts P50"].astype(float)).all()
    # The review queue head with reasons, the merchant ranking head with reasons.
    queue = doc.table("likely_pattern")
    assert len(queue) == views.QUEUE_HEAD and queue["reasons"].str.len().min() > 10
    assert list(queue["rank"].astype(int)) == list(range(1, views.QUEUE_HEAD + 1))
    ranking = doc.table("expected_complaints")
    assert len(ranking) == views.RANKING_HEAD
    assert list(ranking["rank"].astype(int)) == list(range(1, views.RANKING_HEAD + 1))
    assert ranking["reasons"].str.len().min() > 10
    assert "no champion used" in text  # nothing registered: the ranking says it comes from a model fitted here
    # Triage: the policy mix counts every later ticket once; the calibration bins are there.
    mix = doc.table("observed escalation rate")
    assert list(mix["priority"]) == ["P1", "P2", "P3", "P4"]
    assert mix["share"].astype(float).sum() == pytest.approx(1.0, abs=0.01)
    rel = doc.table("observed_rate")
    assert len(rel) == 10
    assert "score_one" in text and "µs" in text


def test_plots_render_in_headless_chromium(built, tmp_path):
    exe = chromium()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
           built["html"].resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    dom = parse(proc.stdout)
    expected = len(parse(built["html"].read_text(encoding="utf-8")).plots)
    assert dom.body.get("data-plots-total") == str(expected), f"report script did not run: <body {dom.body}>"
    assert dom.body.get("data-plots-loaded") == str(expected), f"some plots did not decode: <body {dom.body}>"


def test_a_section_the_data_cannot_support_says_why_and_the_rest_is_written():
    from training.report import _section

    def fails():
        raise ValueError("the data has 1 merchant(s): ranking merchants needs at least 10")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    ok = views.Section("fine", "Fine", "intro", [views.Plot("A plot", fig, "how to read it"),
                                                 views.Table("A table", pd.DataFrame({"x": [1]}), "cap")])
    bad = _section("merchant-risk", "Merchant complaint risk", "intro", fails, echo=lambda s: None)
    assert bad.error and not bad.blocks
    doc_text = render([ok, bad], {"data folder": "x"}, pd.DataFrame())
    doc = parse(doc_text)
    assert len(doc.plots) == 1 and doc.tables == 1
    assert 'class="error"' in doc_text and "ranking merchants needs at least 10" in doc_text


def test_a_bug_in_a_section_is_not_swallowed():
    from training.report import _section

    def bug():
        raise TypeError("unsupported operand")

    with pytest.raises(TypeError):
        _section("x", "X", "intro", bug, echo=lambda s: None)


def test_report_lists_registered_champions():
    """With a registry, the header names the champion versions and the registered-models table is shown."""
    from training.report import model_versions

    fake = pd.DataFrame([{"name": "merchant_risk", "version": 3, "aliases": "champion", "created": "2024-01-01",
                          "primary_metric": "ndcg_at_50", "value": 0.8, "run_id": "r"},
                         {"name": "merchant_risk", "version": 2, "aliases": "", "created": "2023-12-01",
                          "primary_metric": "ndcg_at_50", "value": 0.7, "run_id": "q"}])
    assert model_versions(fake) == "merchant_risk v3"
    assert "none registered" in model_versions(fake.iloc[:0])
    doc = parse(render([], {"model versions": model_versions(fake)}, fake))
    assert "registered-models" in doc.ids and "registered-models" in doc.links
    table = doc.table("version")
    assert list(table["version"]) == ["3", "2"] and "run_id" not in table.columns


@pytest.mark.slow
def test_ranking_uses_a_registered_champion_in_auto_mode(built, tmp_path):
    """--model auto ranks merchants with the registered champion and names it (without one: see the report test)."""
    from features.contract import load_dataset
    from features.merchants import (
        FEATURES,
        MerchantRiskModel,
        build_features,
        build_snapshots,
        prepare_events,
    )
    from features.settings import Settings
    from training import merchant_risk as mr
    from training import registry
    from training.report import model_versions

    settings = Settings(models_dir=tmp_path / "models", merchant_min_label_orders=10)
    ds = load_dataset(built["world"])
    events = prepare_events(ds)
    dates = mr.snapshot_dates(events, settings)
    champion = MerchantRiskModel(kind="poisson", **mr.model_params(settings)).fit(
        build_snapshots(events, dates, settings.merchant_horizon_days))
    example = build_features(events, events.end)[list(FEATURES)].head(5)
    registry.log_and_register(mr.MODEL_NAME, champion, example, "ndcg_at_50", 0.5, True, settings=settings)

    auto = views.merchant_risk_view(ds, settings, use="auto")
    assert auto.ranking_model == "registered champion merchant_risk v1"
    expected = mr.rank_as_of(champion, events, events.end, settings)
    assert list(auto.ranking["merchant_id"]) == list(expected["merchant_id"])
    assert model_versions(views.registered_models(settings)) == "merchant_risk v1"
