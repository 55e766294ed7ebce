"""Fixtures for the run page: the scripted run's log and page, and a real headless Chromium.

The browser tests skip only where no Chromium is installed and CI is not set; with CI=true a missing
browser fails them (CI installs Debian's chromium and chromium-driver: .ci/setup-browser.sh).
Screenshots go to $RLM_TEST_ARTIFACTS (default: test-artifacts/ at the repository's top).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from rlm.cli import main as rlm_main
from tests.viewer import scripted_run

ROOT = Path(__file__).resolve().parents[2]


def _first(*paths: str | None) -> str | None:
    return next((p for p in paths if p and os.access(p, os.X_OK)), None)


def browser_missing() -> str | None:
    """Why no browser can be driven here, or None when one can."""
    if _first(shutil.which("chromium"), "/usr/bin/chromium") is None:
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if _first(shutil.which("chromedriver"), "/usr/bin/chromedriver") is None:
        return "chromedriver is not installed (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="session")
def browser():
    missing = browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser tests must run in CI, but {missing}; .ci/setup-browser.sh installs it")
        pytest.skip(f"{missing}; set CI=true to make this an error")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _first(shutil.which("chromium"), "/usr/bin/chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,1000",
                "--disable-dev-shm-usage", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_first(shutil.which("chromedriver"), "/usr/bin/chromedriver")),
                              options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("RLM_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "viewer"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver, path: Path, full_page: bool = True) -> Path:
    """A PNG of the page (the whole page, not only the window, when ``full_page``)."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.fixture(scope="session")
def scripted_log(tmp_path_factory) -> Path:
    result = scripted_run.run(tmp_path_factory.mktemp("scripted-run"))
    assert result.status == "final", result.message
    assert result.response == scripted_run.ANSWER
    return Path(result.trajectory_path)


@pytest.fixture(scope="session")
def scripted_page(scripted_log, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "run.html"
    assert rlm_main(["view", str(scripted_log), "-o", str(out)]) == 0
    return out
