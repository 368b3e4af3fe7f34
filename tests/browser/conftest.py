"""A real headless Chromium for the browser tests: Debian's package (/usr/bin/chromium),
driven by Playwright. Playwright cannot download its own browsers here; when the binary is
missing and the tests run as root, the session installs Debian's package once with apt-get;
otherwise the browser tests are skipped, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["apt-get", *args],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.skip(
            f"{CHROMIUM} is missing and these tests do not run as root, so they cannot "
            "install it: run `apt-get install -y chromium` as root (Debian's package)"
        )
    if shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and this machine has no apt-get to install it")
    install = ("install", "-y", "--no-install-recommends", "chromium")
    done = _apt_get(*install)
    if done.returncode != 0:  # stale package lists: refresh them once
        _apt_get("update")
        done = _apt_get(*install)
    if done.returncode != 0 or not os.path.exists(CHROMIUM):
        pytest.fail(
            f"apt-get install chromium failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path):
    # Module scope: Playwright's sync API runs an event loop in this thread while it is open,
    # and Django refuses database calls from a thread with a running loop; it must be closed
    # before the other test modules run.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()
