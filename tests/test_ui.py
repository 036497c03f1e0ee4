"""The /ui/ pages in a real browser (Selenium driving headless Chromium) against the real ``bentoml serve``.

A reviewer logs in with an API key, opens the queue, opens an account, records a decision (double-clicked: stored
once), finds it in the decision store and the account gone from the queue; a planner downloads the staffing CSV and
its rows match what ``aftersales staff`` makes of the same forecast. Without a session, with a wrong key, or with a
forged CSRF token, nothing is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from _service import ROOT, Service

from features import reviews

API_KEY = "ui-test-key-1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def ui(deployment_shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    db = f"sqlite:///{root / 'reviews.db'}"
    svc = Service(deployment_shared["settings"].models_dir, deployment_shared["world"], root / "service.log",
                  AFTERSALES_API_KEYS=json.dumps([API_KEY]), AFTERSALES_REVIEW_DB_URL=db)
    try:
        svc.wait_ready()
        yield {"svc": svc, "db": db, "root": root}
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def browser(ui):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) is not installed")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver on PATH")
    from selenium.webdriver.chrome.service import Service as DriverService

    downloads = ui["root"] / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def _by():
    from selenium.webdriver.common.by import By

    return By


def _gone(element) -> bool:
    """The old page's element is gone. Mid-navigation Chromium may answer "Node with given id does not belong to
    the document" (a plain WebDriverException) rather than the stale-element error `EC.staleness_of` waits for."""
    from selenium.common.exceptions import WebDriverException

    try:
        element.is_enabled()
        return False
    except WebDriverException:
        return True


def _click(driver, element, double: bool = False) -> None:
    """Click a link or submit button and wait for the next page (clicks return before the navigation ends)."""
    from selenium.webdriver import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(_by().TAG_NAME, "html")
    if double:
        ActionChains(driver).double_click(element).perform()
        time.sleep(1.0)  # the second click's request, if the browser sends one, replaces the first page
    else:
        element.click()
    WebDriverWait(driver, 60).until(lambda d: _gone(page))
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _login(driver, url: str, key: str, name: str = "ann") -> None:
    By = _by()
    driver.get(f"{url}/ui/login")
    driver.delete_all_cookies()  # start from no session
    driver.get(f"{url}/ui/queue")
    assert "/ui/login" in driver.current_url  # the pages need a session
    driver.find_element(By.ID, "reviewer").send_keys(name)
    driver.find_element(By.ID, "api_key").send_keys(key)
    _click(driver, driver.find_element(By.ID, "login-submit"))


def _queue_accounts(driver) -> list[str]:
    By = _by()
    return [r.get_attribute("data-account") for r in driver.find_elements(By.CSS_SELECTOR, "#queue tr[data-account]")]


def _decisions(db: str) -> pd.DataFrame:
    return reviews.list_decisions(url=db)


def _wait_file(folder: Path, pattern: str, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in folder.glob(pattern) if not p.name.endswith(".crdownload")]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} downloaded into {folder}: {list(folder.iterdir())}")


def test_wrong_key_gets_no_session(ui, browser):
    By = _by()
    _login(browser, ui["svc"].url, "not-the-key")
    assert "not a valid API key" in browser.find_element(By.ID, "error").text
    browser.get(f"{ui['svc'].url}/ui/queue")
    assert "/ui/login" in browser.current_url


def test_review_a_flagged_account_in_the_browser(ui, browser):
    By = _by()
    url = ui["svc"].url
    _login(browser, url, API_KEY)
    assert browser.current_url.endswith("/ui/queue")
    queue = _queue_accounts(browser)
    assert queue, "the queue page shows no account"
    # The page shows the queue the API serves, in its order.
    api = httpx.get(f"{url}/v1/accounts/flagged", headers={"X-API-Key": API_KEY}).json()
    assert queue == [a["account_id"] for a in api["accounts"]]
    target = queue[0]
    assert _decisions(ui["db"]).empty

    _click(browser, browser.find_element(By.LINK_TEXT, target))
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Account {target}"
    assert browser.find_elements(By.ID, "in-queue")
    assert browser.find_elements(By.ID, "reasons") and browser.find_elements(By.CSS_SELECTOR, "svg.chart")

    # A forged CSRF token: refused, nothing written.
    browser.execute_script("document.querySelector('#decision input[name=csrf]').value = 'forged';")
    browser.find_element(By.ID, "note").send_keys("forged")
    _click(browser, browser.find_element(By.ID, "confirm"))
    assert "CSRF" in browser.find_element(By.ID, "error").text
    assert _decisions(ui["db"]).empty

    # The real form, double-clicked: one decision stored.
    browser.get(f"{url}/ui/accounts/{target}")
    decision_id = browser.find_element(By.CSS_SELECTOR, "#decision input[name=decision_id]").get_attribute("value")
    browser.find_element(By.ID, "note").send_keys("returns every order; refunds without items")
    _click(browser, browser.find_element(By.ID, "confirm"), double=True)
    msg = browser.find_element(By.ID, "msg").text
    assert msg.startswith(("Recorded: confirmed_abuse by ann", "Already recorded: confirmed_abuse by ann"))
    # The same form sent again (a retry or a second click that got through): still one decision.
    r = _post_form(url, browser, f"/ui/accounts/{target}/decision",
                   {"decision": "confirmed_abuse", "note": "again", "decision_id": decision_id})
    assert r.status_code == 303 and "Already+recorded" in r.headers["location"]

    stored = _decisions(ui["db"])
    assert len(stored) == 1
    row = stored.iloc[0]
    assert (row["account_id"], row["decision"], row["reviewer"], row["decision_id"]) == (
        target, "confirmed_abuse", "ann", decision_id)
    assert row["note"] == "returns every order; refunds without items"
    earlier = browser.find_element(By.ID, "decisions").text
    assert "confirmed_abuse" in earlier and "ann" in earlier and decision_id in earlier

    browser.get(f"{url}/ui/queue")
    after = _queue_accounts(browser)
    assert target not in after and after, "a decided account is still in the queue"


def _post_form(url: str, driver, path: str, data: dict, csrf: str | None = None) -> httpx.Response:
    """Post a form with the browser's session cookie (httpx does not send a Secure cookie over http itself)."""
    cookie = driver.get_cookie("aftersales_ui")
    page = driver.page_source
    token = csrf if csrf is not None else re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    return httpx.post(f"{url}{path}", data={**data, "csrf": token}, follow_redirects=False,
                      headers={"Cookie": f"aftersales_ui={cookie['value']}"})


def test_nothing_written_without_a_session_or_token(ui, browser):
    url = ui["svc"].url
    before = len(_decisions(ui["db"]))
    account = _queue_accounts_api(url)[0]
    # No session at all (an API key header does not open the pages' forms either).
    r = httpx.post(f"{url}/ui/accounts/{account}/decision", headers={"X-API-Key": API_KEY},
                   data={"decision": "cleared", "decision_id": "x1", "csrf": "whatever"}, follow_redirects=False)
    assert r.status_code == 401
    # A valid session (the browser's) with a forged or missing token.
    _login(browser, url, API_KEY)
    browser.get(f"{url}/ui/accounts/{account}")
    for token in ("forged", ""):
        r = _post_form(url, browser, f"/ui/accounts/{account}/decision",
                       {"decision": "cleared", "decision_id": f"x-{token or 'none'}"}, csrf=token)
        assert r.status_code == 403
    # A token signed for another session does not work with this one.
    other = httpx.get(f"{url}/ui/login")
    foreign = re.search(r'name="csrf" value="([^"]+)"', other.text).group(1)
    r = _post_form(url, browser, f"/ui/accounts/{account}/decision",
                   {"decision": "cleared", "decision_id": "x-foreign"}, csrf=foreign)
    assert r.status_code == 403
    # A forged cookie (altered payload, old signature) is no session.
    cookie = browser.get_cookie("aftersales_ui")["value"]
    body, sig = cookie.rsplit(".", 1)
    r = httpx.post(f"{url}/ui/accounts/{account}/decision", follow_redirects=False,
                   headers={"Cookie": f"aftersales_ui={body[:-2]}xx.{sig}"},
                   data={"decision": "cleared", "decision_id": "x-cookie", "csrf": "x"})
    assert r.status_code == 401
    assert len(_decisions(ui["db"])) == before
    # The JSON API still needs its key, and still refuses form bodies.
    assert httpx.get(f"{url}/v1/accounts/flagged").status_code == 401
    r = httpx.post(f"{url}/v1/accounts/{account}/decision", headers={"X-API-Key": API_KEY},
                   data={"decision": "cleared", "reviewer": "x"})
    assert r.status_code == 415
    assert len(_decisions(ui["db"])) == before


def _queue_accounts_api(url: str) -> list[str]:
    r = httpx.get(f"{url}/v1/accounts/flagged", headers={"X-API-Key": API_KEY})
    return [a["account_id"] for a in r.json()["accounts"]]


def test_staffing_csv_matches_aftersales_staff(ui, browser, tmp_path):
    By = _by()
    url = ui["svc"].url
    _login(browser, url, API_KEY)
    browser.get(f"{url}/ui/forecast")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polygon.band")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline.past")
    browser.find_element(By.ID, "staffing-csv").click()  # a download: no navigation
    staffing = pd.read_csv(_wait_file(browser.downloads, "staffing-*.csv"))
    browser.find_element(By.ID, "forecast-csv").click()  # a download: no navigation
    forecast_file = _wait_file(browser.downloads, "forecast-*.csv")

    out = tmp_path / "staff.csv"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "training.cli", "staff", "--forecast", str(forecast_file),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cli = pd.read_csv(out)
    assert list(staffing.columns) == list(cli.columns)
    assert staffing[["date", "channel"]].equals(cli[["date", "channel"]])
    assert staffing[["agents_p50", "agents_p90"]].equals(cli[["agents_p50", "agents_p90"]])
    for c in ("volume_p50", "volume_p90"):  # the forecast CSV holds 3 decimals, the staffing CSV 2
        assert (staffing[c] - cli[c]).abs().max() <= 0.011
    # The page's table shows the same agents as the CSV.
    table = browser.find_element(By.ID, "staffing").text
    first = staffing.iloc[0]
    assert first["date"] in table and f"{int(first['agents_p50'])} / {int(first['agents_p90'])}" in table


def test_sales_plan_upload_changes_the_forecast(ui, browser, tmp_path):
    By = _by()
    url = ui["svc"].url
    _login(browser, url, API_KEY)
    browser.get(f"{url}/ui/forecast")
    origin = pd.Timestamp(re.search(r"origin (\d{4}-\d{2}-\d{2})", browser.page_source).group(1))
    plan = tmp_path / "plan.csv"
    days = pd.date_range(origin + pd.Timedelta(days=1), origin + pd.Timedelta(days=7))
    pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "orders": 400}).to_csv(plan, index=False)
    browser.find_element(By.ID, "plan").send_keys(str(plan))
    _click(browser, browser.find_element(By.ID, "plan-submit"))
    effect = browser.find_element(By.ID, "plan-effect").text
    before, after = (float(x.replace(",", "")) for x in re.search(r"horizon ([\d,.]+) → ([\d,.]+)", effect).groups())
    assert after > before  # a plan far above the recent order level brings more returns
    bad = tmp_path / "bad.csv"
    bad.write_text("day,units\n2024-01-01,3\n")
    browser.find_element(By.ID, "plan").send_keys(str(bad))
    _click(browser, browser.find_element(By.ID, "plan-submit"))
    assert "bad.csv" in browser.find_element(By.ID, "plan-error").text


def test_merchant_page_shows_ranking_and_history(ui, browser):
    By = _by()
    url = ui["svc"].url
    _login(browser, url, API_KEY)
    browser.get(f"{url}/ui/merchants")
    rows = browser.find_elements(By.CSS_SELECTOR, "#merchants tr[data-merchant]")
    api = httpx.get(f"{url}/v1/merchants/risk", headers={"X-API-Key": API_KEY}).json()
    assert [r.get_attribute("data-merchant") for r in rows] == [m["merchant_id"] for m in api["merchants"]]
    assert browser.find_elements(By.CSS_SELECTOR, "#merchants svg.spark rect")


# --------------------------------------------------------------------------------------------------------------------
# Without a browser: the session cookie and CSRF token, and the chart


def test_session_cookie_and_csrf_token_are_bound_and_signed():
    from serving.ui_common import Sessions

    sessions = Sessions(["k1", "k2"])
    assert sessions.key_ok("k2") and not sessions.key_ok("k3") and not sessions.key_ok("")
    s, cookie = sessions.issue("ann")
    assert sessions.read(cookie) == s and s.logged_in
    body, sig = cookie.rsplit(".", 1)
    forged_body = body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB")
    assert sessions.read(f"{forged_body}.{sig}") is None  # altered payload
    assert sessions.read(f"{body}.{'0' * len(sig)}") is None  # forged signature
    assert sessions.read(cookie.replace(".", "")) is None and sessions.read(None) is None
    assert Sessions(["k1"]).read(cookie) is None  # other keys: other signing key, every session ends
    assert Sessions(["k2", "k1"]).read(cookie) == s  # same keys (any order, any worker): same sessions
    other, _ = sessions.issue("bob")
    token = sessions.csrf(s)
    assert sessions.csrf_ok(s, token)
    assert not sessions.csrf_ok(other, token)  # bound to its session
    assert not sessions.csrf_ok(s, "") and not sessions.csrf_ok(None, token) and not sessions.csrf_ok(s, "x" * 64)


def test_expired_session_is_no_session(monkeypatch):
    from serving import ui_common as ui

    sessions = ui.Sessions(["k1"])
    _, cookie = sessions.issue("ann")
    now = time.time()
    monkeypatch.setattr(ui.time, "time", lambda: now + ui.SESSION_TTL_S + 1)
    assert sessions.read(cookie) is None


def test_fan_chart_draws_band_past_and_events():
    from datetime import date, timedelta

    from serving.ui_charts import fan_chart

    origin = date(2024, 11, 1)
    past = pd.Series([5.0, 7.0, 6.0], index=[origin - timedelta(days=i) for i in (2, 1, 0)])
    fc = pd.DataFrame({"date": [origin + timedelta(days=i) for i in (1, 2, 3)], "p10": [1.0, 2.0, 3.0],
                       "p50": [4.0, 5.0, 6.0], "p90": [9.0, 10.0, 30.0]})
    svg = str(fan_chart(past, fc, [(origin + timedelta(days=2), "singles_day <b>"), (date(2020, 1, 1), "old")]))
    assert svg.count('class="band"') == 1 and svg.count('class="p50"') == 1 and svg.count('class="past"') == 1
    assert svg.count('class="event"') == 1  # events outside the drawn days are left out
    assert "singles_day &lt;b&gt;" in svg  # names are escaped
    assert ">30<" in svg  # the axis reaches the highest P90


def test_login_redirects_only_inside_the_pages():
    from serving.ui_common import _safe_next

    assert _safe_next("/ui/accounts/A1?msg=x") == "/ui/accounts/A1?msg=x"
    for bad in ("https://evil.example/", "//evil.example/ui/", "/v1/accounts/flagged", "/ui\\..\\x", "", None):
        assert _safe_next(bad) == "/ui/queue"


def test_component_weights_of_an_ensemble_are_shown_per_series():
    from features.return_volume import ReturnVolumeForecaster
    from serving.ui_forecast import component_weights

    class Blend:  # the layout of an ensemble forecaster's weights_table(): one row per series, band and kind of day
        def weights_table(self):
            return pd.DataFrame({"series": ["total", "total", "channel=chat"], "band": ["1-7", "8-28", "1-7"],
                                 "window": ["ordinary"] * 3, "lightgbm": [0.6, 0.3, 1.0],
                                 "planners": [0.4, 0.7, 0.0], "why": ["a", "b", "c"]})

    t = component_weights(Blend(), "total")
    assert list(t.columns) == ["band", "window", "lightgbm", "planners", "why"] and len(t) == 2
    assert t["lightgbm"].tolist() == [0.6, 0.3]
    assert len(component_weights(Blend(), "channel=chat")) == 1
    assert component_weights(ReturnVolumeForecaster(), "total") is None  # a single model: nothing to show
