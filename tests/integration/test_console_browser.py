"""The console in a real headless Chromium: each role signs in through the form, sees what
its role allows and cannot reach the rest; hostile record fields stay text (no script runs,
the strict CSP reports nothing); sign-out ends the session."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from lineage_guard.lineage.store import open_store
from lineage_guard.web.auth import Role
from lineage_guard.web.console import create_console
from tests.integration.test_report_browser import browser  # noqa: F401 (the fixture)
from tests.web_helpers import XSS_ID, add_user, console_store, leaks_counted


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("console")
    store = open_store(f"sqlite:///{folder / 'lineage.db'}")
    console_store(store)
    for role in Role:
        add_user(store, str(role), role)
    add_user(store, "acme-auditor", Role.AUDITOR, ["acme"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            leaks_counted(create_console(store)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)
    store.close()


def sign_in(driver: webdriver.Chrome, base: str, name: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/trace")  # not signed in: sent to the sign-in page
    assert driver.current_url == f"{base}/signin?next=/trace"
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(f"pw-{name}")
    driver.find_element(By.ID, "signin").click()
    WebDriverWait(driver, 20).until(lambda d: "/signin" not in d.current_url)


def nav(driver: webdriver.Chrome) -> list[str]:
    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "header nav a")]


def heading(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.TAG_NAME, "h1").text


def no_script_ran(driver: webdriver.Chrome) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 (raises when no alert is open)
    errors = [e for e in driver.get_log("driver") if e["level"] == "SEVERE"]
    assert errors == []


NAV = {
    "viewer": ["Overview", "Runs"],
    "auditor": ["Overview", "Runs", "Trace", "Leaks", "Quarantine"],
    "operator": ["Overview", "Runs", "Trace", "Leaks", "Quarantine", "Verify"],
    "admin": ["Overview", "Runs", "Trace", "Leaks", "Quarantine", "Verify", "Access log"],
}


@pytest.mark.parametrize("role", list(NAV))
def test_each_role_sees_what_it_may(
    browser: webdriver.Chrome,  # noqa: F811
    console: str,
    role: str,
) -> None:
    sign_in(browser, console, role)
    if role == "viewer":  # /trace is not for viewers: the page says so
        assert heading(browser) == "Not allowed"
        browser.get(f"{console}/")
    else:
        assert heading(browser) == "Trace a record"
    assert nav(browser) == NAV[role]
    assert browser.find_element(By.ID, "whoami").text == f"{role} ({role})"
    browser.get(f"{console}/")
    assert browser.find_element(By.CSS_SELECTOR, "#leak-count .big").text == "1 leak"
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.chart svg rect")) > 10
    for path, needed in (
        ("/quarantine", "auditor"),
        ("/verify", "operator"),
        ("/access-log", "admin"),
    ):
        browser.get(f"{console}{path}")
        allowed = list(NAV).index(role) >= list(NAV).index(needed)
        assert (heading(browser) != "Not allowed") is allowed, path
    if role != "viewer":
        browser.get(f"{console}/quarantine")
        cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#quarantine td")]
        assert XSS_ID in cells  # shown as text
    no_script_ran(browser)
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    WebDriverWait(browser, 20).until(lambda d: d.current_url.endswith("/signin"))
    assert heading(browser) == "Sign in"
    browser.get(f"{console}/runs")
    assert heading(browser) == "Sign in"  # the session is gone


def test_a_tenant_bound_auditor_sees_its_tenant_only(
    browser: webdriver.Chrome,  # noqa: F811
    console: str,
) -> None:
    sign_in(browser, console, "acme-auditor")
    browser.get(f"{console}/trace?record_id=g-ok")
    assert heading(browser) == "Not found"
    browser.get(f"{console}/trace?record_id=a-child")
    records = {td.text for td in browser.find_elements(By.CSS_SELECTOR, "#trace td:nth-child(3)")}
    assert records == {"a-child", "a-ok"}
    browser.get(f"{console}/verify")
    assert heading(browser) == "Not allowed"
    no_script_ran(browser)
