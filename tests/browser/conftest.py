"""A headless Chromium on the session mesh's page (aimesh.browser: Debian's chromium, driven by
Selenium; `bin/aimesh test` installs it where missing)."""
from __future__ import annotations

import pytest

from aimesh import browser as chromium_browser
from aimesh import paths

ARTIFACTS = paths.ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def chromium():
    if not chromium_browser.installed():
        pytest.fail("the page's tests need Debian's chromium and chromium-driver: `bin/aimesh "
                    "test` installs them (as root); or apt-get install chromium chromium-driver")
    driver = chromium_browser.open_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium, mesh):
    """The browser on a fresh page of the mesh, with no session left from the test before."""
    chromium.get(f"http://{mesh.gateway}/")
    chromium.execute_script("sessionStorage.clear()")
    chromium.get(f"http://{mesh.gateway}/")
    return chromium


def screenshot(driver, name: str) -> None:
    """Saved under test-artifacts/ (what a person would have seen)."""
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
