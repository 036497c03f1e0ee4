"""Screenshots of the /ui/ pages for the README (docs/screenshots/*.png), taken with headless Chromium.

Builds the small deployment the service tests use (tests/_service.py: a world and every champion) under ``--work``
unless one is there, starts ``bentoml serve`` with an API key, logs in through the login form like a reviewer and
saves one PNG per page: login, review queue, account, planning (with a sales plan uploaded), merchants.

Usage: ``python scripts/ui_screenshots.py [--work /tmp/ui-shots] [--out docs/screenshots]``
Needs selenium (dev extra) and chromium + chromedriver on PATH.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

API_KEY = "screenshot-key"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ui-shots"), help="Deployment folder (reused).")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="Where the PNGs go.")
    ap.add_argument("--width", type=int, default=1280, help="Browser width in pixels.")
    args = ap.parse_args()

    import pandas as pd
    from _service import Service, build_deployment
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By

    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "ready").exists():
        build_deployment(args.work)
        (args.work / "ready").touch()
    args.out.mkdir(parents=True, exist_ok=True)
    svc = Service(args.work / "models", args.work / "world", args.work / "service.log",
                  AFTERSALES_API_KEYS=json.dumps([API_KEY]),
                  AFTERSALES_REVIEW_DB_URL=f"sqlite:///{args.work / 'reviews.db'}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={args.width},900", "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = None
    try:
        svc.wait_ready(300)
        driver = webdriver.Chrome(service=DriverService(shutil.which("chromedriver")), options=opts)

        def shot(name: str, max_height: int = 2200) -> None:
            time.sleep(0.3)
            for _ in range(3):  # the window's height includes its frame: measure again after each resize
                inner = driver.execute_script("return window.innerHeight")
                height = min(driver.execute_script("return document.documentElement.scrollHeight"), max_height)
                if inner >= height:
                    break
                outer = driver.get_window_size()["height"]
                driver.set_window_size(args.width, outer + height - inner)
            path = args.out / f"{name}.png"
            driver.save_screenshot(str(path))
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")

        def submit(element) -> None:
            page = driver.find_element(By.TAG_NAME, "html")
            element.click()
            for _ in range(600):
                try:
                    page.tag_name  # noqa: B018 — raises once the old page is gone
                except Exception:  # noqa: BLE001
                    break
                time.sleep(0.05)

        driver.get(f"{svc.url}/ui/queue")
        driver.find_element(By.ID, "reviewer").send_keys("ann")
        driver.find_element(By.ID, "api_key").send_keys(API_KEY)
        shot("login", 600)
        submit(driver.find_element(By.ID, "login-submit"))
        shot("queue")
        rows = driver.find_elements(By.CSS_SELECTOR, "#queue tr[data-account]")
        ring = [r for r in rows if r.find_elements(By.TAG_NAME, "td")[4].text == "ring"]  # shows links and ring
        submit((ring or rows)[0].find_element(By.TAG_NAME, "a"))
        driver.find_element(By.ID, "note").send_keys("refunds without items on most orders")
        shot("account")
        driver.get(f"{svc.url}/ui/forecast")
        origin = pd.Timestamp(driver.find_element(By.CSS_SELECTOR, "#pick input[name=origin]")
                              .get_attribute("placeholder"))
        plan = args.work / "plan.csv"
        days = pd.date_range(origin + pd.Timedelta(days=1), origin + pd.Timedelta(days=7))
        pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "orders": 60}).to_csv(plan, index=False)
        driver.find_element(By.ID, "plan").send_keys(str(plan))
        submit(driver.find_element(By.ID, "plan-submit"))
        shot("forecast")
        driver.get(f"{svc.url}/ui/merchants")
        shot("merchants")
    finally:
        if driver is not None:
            driver.quit()
        svc.stop()


if __name__ == "__main__":
    main()
