"""A headless Chromium for the page's tests and benchmark: Debian's chromium and chromium-driver
(installed by `bin/aimesh test` where missing), driven by Selenium, never downloading a driver."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGES = ("chromium", "chromium-driver")
APT_TIMEOUT_S = 900                      # each apt-get step: a fresh install fetches ~100 MB
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1000")


def installed() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


def install() -> None:
    """apt-get the browser and its driver when missing (needs root; says so otherwise)."""
    if installed():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"the page's tests need {' and '.join(PACKAGES)}: "
                           f"sudo apt-get install {' '.join(PACKAGES)}")
    print(f"aimesh: installing {', '.join(PACKAGES)} (Debian packages, once)", flush=True)
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "timeout": APT_TIMEOUT_S,
             "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
    subprocess.run(["apt-get", "update", "-qq"], check=True, **quiet)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, **quiet)


def open_chromium():
    """A new headless browser; the caller quits it."""
    os.environ["SE_OFFLINE"] = "true"    # Selenium Manager must never try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
