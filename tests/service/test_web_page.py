"""The web page end to end in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium)
against a server on 127.0.0.1: upload images, wait for the results, check what is shown, save screenshots.

Needs ``apt-get install chromium chromium-driver`` and ``pip install selenium``; skipped with the reason otherwise.
No browser is ever downloaded (Selenium is given the driver and browser paths, so Selenium Manager never runs).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from svc_fakes import BrightnessScorer, FakeAgentic, RegionsScorer, png_bytes, running_service

from lmmiqa.service.app import ServiceConfig

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def _open(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    # the method list is loaded from /v1/methods
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#method-select option"))


def _upload(driver, paths: list[Path]) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in paths))


def _cards_done(driver, n: int):
    from selenium.webdriver.common.by import By

    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
    if len(cards) == n and all(c.get_attribute("data-state") in ("done", "error") for c in cards):
        return cards
    return False


def test_upload_shows_score_scale_and_levels(browser, tiny_qalign_model, tmp_path):
    from selenium.webdriver.common.by import By

    img = tmp_path / "photo.png"
    img.write_bytes(png_bytes(160, 120, 4))
    config = ServiceConfig(method="q-align", options={"model": tiny_qalign_model, "device": "cpu"})
    with running_service(config) as (url, service):
        _open(browser, url)
        assert "q-align" in browser.find_element(By.ID, "server-info").text
        assert not browser.find_element(By.ID, "key-label").is_displayed()  # no key on this server
        if "agentic-iqa" not in service.methods_info()["methods"] and not service.methods_info()["assess_available"]:
            assert not browser.find_element(By.ID, "assess-label").is_displayed()
        _upload(browser, [img])
        (card,) = _wait(browser, lambda d: _cards_done(d, 1))
        assert card.get_attribute("data-state") == "done", card.text
        text = card.find_element(By.CSS_SELECTOR, ".score-value").text
        shown = float(text)
        assert 1.0 <= shown <= 5.0
        expected = service.default_scorer.score([str(img)])[0]
        assert len(text.split(".")[1]) == 3  # always 3 decimals, on every card
        assert shown == pytest.approx(expected.score, abs=1e-3)
        assert "1–5" in card.find_element(By.CSS_SELECTOR, ".scale-text").text
        # random weights: the card says that the covered mass is low, as the command line warns
        assert expected.details["covered_mass"] < 0.5
        note = card.find_element(By.CSS_SELECTOR, ".note")
        assert note.is_displayed() and "Low covered mass" in note.text and "random weights" in note.text
        assert browser.execute_script("return document.querySelector('link[rel=icon]').href").endswith(
            "/static/favicon.svg")
        bars = card.find_elements(By.CSS_SELECTOR, ".levels .bar")
        assert [b.get_attribute("data-level") for b in bars] == ["1", "2", "3", "4", "5"]
        labels = card.find_element(By.CSS_SELECTOR, ".bar-labels").text
        assert "excellent" in labels and "bad" in labels
        # dropping a file on the drop zone works like choosing it
        browser.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const canvas = document.createElement("canvas");
            canvas.width = 80; canvas.height = 60;
            const g = canvas.getContext("2d");
            g.fillStyle = "#3a7"; g.fillRect(0, 0, 80, 60); g.fillStyle = "#fff"; g.fillRect(20, 15, 30, 20);
            canvas.toBlob((blob) => {
              const dt = new DataTransfer();
              dt.items.add(new File([blob], "dropped.png", {type: "image/png"}));
              const zone = document.getElementById("drop-zone");
              zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
              zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
              done(true);
            }, "image/png");
            """
        )
        cards = _wait(browser, lambda d: _cards_done(d, 2))
        dropped = cards[0]
        assert dropped.find_element(By.CSS_SELECTOR, ".name").text == "dropped.png"
        assert dropped.get_attribute("data-state") == "done"
        assert 1.0 <= float(dropped.find_element(By.CSS_SELECTOR, ".score-value").text) <= 5.0
        shot = tmp_path / "web_page_score.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000


def test_regions_explanation_tools_and_inline_errors(browser, fake_methods, tmp_path):
    from selenium.webdriver.common.by import By

    fake_methods(RegionsScorer, FakeAgentic, BrightnessScorer)
    good = tmp_path / "scene.png"
    good.write_bytes(png_bytes(240, 160, 5))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    config = ServiceConfig(method="fake-regions", allow_methods=("fake-brightness", "agentic-iqa"))
    with running_service(config) as (url, _):
        _open(browser, url)
        assert browser.find_element(By.ID, "assess-label").is_displayed()  # agentic method registered
        _upload(browser, [good, broken])
        cards = _wait(browser, lambda d: _cards_done(d, 2))
        by_name = {c.find_element(By.CSS_SELECTOR, ".name").text: c for c in cards}
        ok, bad = by_name["scene.png"], by_name["broken.jpg"]

        assert bad.get_attribute("data-state") == "error"
        assert not bad.find_element(By.CSS_SELECTOR, ".figure").is_displayed()
        err = bad.find_element(By.CSS_SELECTOR, ".error")
        assert err.is_displayed() and err.text.startswith("400") and "broken.jpg" in err.text

        regions = ok.find_elements(By.CSS_SELECTOR, ".regions .region")
        assert [r.find_element(By.CSS_SELECTOR, ".region-label").text for r in regions] == ["1.600", "0.400"]
        # the first box covers the top-left quarter of the drawn picture
        img = ok.find_element(By.CSS_SELECTOR, ".thumb")
        layer = ok.find_element(By.CSS_SELECTOR, ".regions")
        box = regions[0].rect
        assert box["width"] == pytest.approx(layer.rect["width"] / 2, abs=3)
        assert box["height"] == pytest.approx(layer.rect["height"] / 2, abs=3)
        assert layer.rect["width"] <= img.rect["width"] + 1
        explanation = ok.find_element(By.CSS_SELECTOR, ".explanation")
        assert "<b>strong</b>" in explanation.text  # shown as text, never as HTML
        rows = [r.text for r in ok.find_elements(By.CSS_SELECTOR, ".tools tbody tr")]
        assert rows == ["niqe 4.250 3.100", "brisque 31.500 3.750", "ssim error: needs a reference"]
        assert not ok.find_element(By.CSS_SELECTOR, ".note").is_displayed()  # no covered mass: no note
        browser.save_screenshot(str(tmp_path / "web_page_regions.png"))

        # the agentic assessment goes to /v1/assess, with the question typed on the page
        assert not browser.find_element(By.ID, "question-label").is_displayed()
        browser.find_element(By.ID, "assess-toggle").click()
        browser.find_element(By.ID, "question-input").send_keys("Is the sky banded?")
        _upload(browser, [good])
        cards = _wait(browser, lambda d: _cards_done(d, 3))
        newest = cards[0]
        assert "agentic-iqa" in newest.find_element(By.CSS_SELECTOR, ".scale-text").text
        assert "(question: Is the sky banded?)" in newest.find_element(By.CSS_SELECTOR, ".explanation").text
        browser.find_element(By.ID, "assess-toggle").click()

        # invalid options JSON is reported on the page without sending anything
        opts = browser.find_element(By.ID, "options-input")
        opts.clear()
        opts.send_keys("{nope")
        _upload(browser, [good])
        page_error = _wait(browser, lambda d: d.find_element(By.ID, "page-error").is_displayed() and d.find_element(By.ID, "page-error"))
        assert "JSON object" in page_error.text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#results .card")) == 3

        # a server-side option error shows inline on the card
        opts.clear()
        opts.send_keys('{"offset": "lots"}')
        _upload(browser, [good])
        cards = _wait(browser, lambda d: _cards_done(d, 4))
        assert cards[0].find_element(By.CSS_SELECTOR, ".error").text.startswith("422")
