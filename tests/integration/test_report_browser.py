"""The HTML evidence report opens in a real headless Chromium, without errors, charts drawn."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from lineage_guard.cli.demo import run_demo

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> webdriver.Chrome:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "install Debian's chromium and chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,2200",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager must not try to download one.
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield session
    session.quit()


def test_report_renders_its_charts(browser: webdriver.Chrome, tmp_path: Path) -> None:
    run_demo(1500, tmp_path / "demo")
    page = tmp_path / "demo" / "report" / "report.html"
    browser.get(page.as_uri())

    assert browser.title == "lineage-guard evidence report"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart svg")
    assert len(charts) == 4
    for chart in charts:
        size = chart.size
        assert size["width"] > 200 and size["height"] > 100, size
        drawn = browser.execute_script(
            "return arguments[0].querySelectorAll('path, rect, use').length", chart
        )
        assert drawn > 10
    kpis = browser.find_element(By.TAG_NAME, "body").text
    assert "records read: 1500" in kpis
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
