"""Debian's Chromium, driven by Playwright, for the tests that play the outputs in a browser."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: The flags this machine's closed network and a headless root session need.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--autoplay-policy=no-user-gesture-required"]


def require_browser(*scripts: Path) -> None:
    """Skip unless Chromium, the playwright package and the player ``scripts`` are here; under
    CI fail instead, since CI runs ``make test``, which installs them: missing is a bug."""
    missing = [str(p) for p in (CHROMIUM, *scripts) if not p.exists()]
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        reason = f"browser tests need {', '.join(missing)} (make test installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium, closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives each launch a new, empty user-data directory.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS,
                                              headless=True)
        try:
            yield launched
        finally:
            launched.close()
