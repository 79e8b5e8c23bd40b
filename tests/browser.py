"""A real headless Chromium for the browser tests, driven by Playwright's Python package.

The browser is Debian's ``chromium`` (``make browser`` installs it); Playwright's own
browser download is not used.  ``ICV_CHROMIUM`` names another executable.  Tests that
need the browser skip, saying why, where it or Playwright is missing.
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlsplit

import pytest

CHROMIUM_ENV = "ICV_CHROMIUM"
# What works on these machines: no sandbox (containers), no GPU, and nothing that
# reaches for the network on its own (updates, sync, QUIC probes).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """The Chromium executable to drive, or ``None`` when there is none."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured if shutil.which(configured) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def sync_playwright():
    """Playwright's sync API, or a skip that says what to install."""
    api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need Playwright's Python package (the 'test' extra)"
    )
    if chromium_path() is None:
        pytest.skip(f"no Chromium to drive: install Debian's chromium (`make browser`) or set {CHROMIUM_ENV}")
    return api.sync_playwright


def launch(playwright):
    """A fresh headless Chromium (Playwright gives it a new, empty profile)."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)


class LocalOnly:
    """Lets a page reach its own server only; records what else it asked for."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.refused: list[str] = []

    def __call__(self, route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == self.host or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.refused.append(url)
            route.abort()
