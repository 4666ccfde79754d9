"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver, against `stepmap dashboard` and `stepmap run` in their own processes.

It loads a run's page while the run is in progress, sees the done count move by itself, sees
the run finish with its exact total, and checks that a workload error holding markup shows
as text with no script executed. The screenshot goes to a temporary file; with
STEPMAP_UPDATE_DOCS=1 it also replaces docs/dashboard.png (the README's picture).
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

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from support_workloads import HOSTILE_TEXT

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ITEMS = 60
GATE_AT = 44  # items from here on wait for the test's gate
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1500")


def _env() -> dict:
    paths = [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


@pytest.fixture
def browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dashboard(runs):
    """`stepmap dashboard` on a free port; yields its URL; stopped by its PID."""
    Path(runs).mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-m", "stepmap", "dashboard", "--results", runs,
                                "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env())
    try:
        line = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", line), (line, process.stderr.read())
        yield line
    finally:
        process.terminate()
        process.wait(30)
        process.stdout.close()
        process.stderr.close()


def _start_run(runs: str, run_id: str, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stepmap", "run", *argv, "--results", runs,
                             "--run-id", run_id, "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _texts(driver, css: str) -> list[str]:
    """The rendered text of every match, read in one script call (the page's script
    replaces table rows as it polls: elements found earlier may be gone)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText.trim())",
        css)


def _done(driver) -> int:
    return int(driver.find_element(By.ID, "done").text.replace(",", ""))


def test_live_run_page_moves_then_finishes(browser, dashboard, runs, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    # the last items wait for a gate the test opens: the run is in progress until then
    gated = list(range(GATE_AT, ITEMS))
    run = _start_run(runs, "live", "chaos", "--items", str(ITEMS), "--sleep", "0.15",
                     "--workers", "2", "--batch-size", "1", "--state-dir", str(state),
                     "--faults", json.dumps({"flaky": [5], "gated": gated}))
    try:
        record = Path(runs) / "live" / "run.json"
        deadline = time.monotonic() + 300
        while not record.exists():
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
            time.sleep(0.05)
        browser.get(dashboard + "runs/live")
        wait = WebDriverWait(browser, 300, poll_frequency=0.05)
        assert browser.find_element(By.ID, "status").text == "RUNNING"
        first = _done(browser)
        assert first < ITEMS
        # the page updates by itself: the count moves while the run is still running
        wait.until(lambda d: _done(d) > first and d.find_element(By.ID, "status").text
                   == "RUNNING")
        moved = _done(browser)
        assert first < moved < ITEMS
        # drawn with the count: the rate and the time left
        assert re.fullmatch(r"[\d.,]+/s", browser.find_element(
            By.CSS_SELECTOR, "[data-field=rate]").text)
        assert browser.find_element(By.CSS_SELECTOR, "[data-field=eta_seconds]").text != "-"
        wait.until(lambda d: _done(d) >= GATE_AT - 2 and d.find_element(By.ID, "timeline")
                   .get_attribute("naturalWidth") not in (None, "0"))
        assert browser.find_element(By.ID, "status").text == "RUNNING"
        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG")
        (state / "open").touch()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "SUCCEEDED")
        assert _done(browser) == ITEMS
        total = browser.find_element(By.CSS_SELECTOR, "[data-field=total_preview]").text
        assert total == str(sum(i * i for i in range(ITEMS)))
        assert browser.find_element(By.CSS_SELECTOR, "[data-field=failed]").text == "0"
        assert browser.find_element(By.CSS_SELECTOR, "[data-field=pending]").text == "0"
        assert run.wait(300) == 0
        browser.get(dashboard)  # the list shows it finished, with its counts
        cells = WebDriverWait(browser, 30).until(
            lambda d: _texts(d, "tr[data-run-id=live] td"))
        assert cells[:8] == ["live", "chaos", "local", "SUCCEEDED", str(ITEMS), "0", "0",
                             str(ITEMS)]
    finally:
        (state / "open").touch()  # whatever failed, nothing stays waiting at the gate
        if run.poll() is None:
            run.terminate()
            run.wait(30)
        run.stdout.close()
        run.stderr.close()
    if os.environ.get("STEPMAP_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")


def test_workload_markup_shows_as_text_and_runs_no_script(browser, dashboard, runs):
    run = _start_run(runs, "hostile", "support_workloads:HOSTILE", "--input", '{"items": 3}',
                     "--workers", "1", "--batch-size", "1", "--retries", "0",
                     "--tolerate-count", "1")
    assert run.wait(300) == 1
    run.stdout.close()
    run.stderr.close()
    for page in ("runs/hostile", "runs/hostile/failures"):
        browser.get(dashboard + page)
        messages = WebDriverWait(browser, 30).until(
            lambda d: _texts(d, "#failures .error-message"))
        assert messages == [f"bad item {HOSTILE_TEXT} #1"]
        assert browser.find_elements(By.CSS_SELECTOR, "main script, main img[src=x]") == []
        assert browser.execute_script("return window.__xss === undefined") is True
    # the script-built rows (after the page's first poll) are text too
    browser.get(dashboard + "runs/hostile")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                     .get_attribute("data-polled") not in (None, "0"))
    assert _texts(browser, "#failures .error-message") == [f"bad item {HOSTILE_TEXT} #1"]
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img[src=x]") == []
    assert browser.execute_script("return window.__xss === undefined") is True
