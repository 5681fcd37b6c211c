"""Headless Chromium for the console's browser tests and its screenshots: Debian's `chromium`
and `chromium-driver`, driven through Selenium (nothing downloaded: the system's browser).

Flags keep the browser off the network (no component updates, sync, background fetches or
QUIC) and in a fresh profile directory, so a run depends on nothing but the engine it opens.
"""

import os
import shutil
import tempfile
from typing import Optional

CHROMIUM = os.environ.get("GARRISON_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GARRISON_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def available() -> Optional[str]:
    """None when the browser can be started, else why not."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver; scripts/install.sh dev does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra)"
    return None


class Browser:
    """A headless Chromium (Selenium WebDriver) with its own profile directory; `.driver`."""

    def __init__(self, width: int = 1440, height: int = 900):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="garrison-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={width},{height}")
        options.add_argument(f"--user-data-dir={self.profile}")
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(20)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
