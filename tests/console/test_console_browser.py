"""The review console in a real browser (Debian's Chromium, driven through its chromedriver), used as a person
would: a reviewer signs in, reviews three answers with the keyboard (thumbs up, thumbs down, a correction),
sees the correction in the dataset `trainer dataset` writes, and is refused the admin pages; an admin promotes
a canary and rolls it back. Captured prompts, answers, comments, judge reasons and key names that hold
markup are shown as text on every page (no dialog, no script, no request). Each page is saved as a
screenshot (into $CONSOLE_SCREENSHOTS when set)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from gateway.store.queries import inference_of, insert_inferences
from tests.console.support import PAYLOADS, Bench, flagged_route
from tests.store.support import MODEL, create_key, feedback_rows, on_db
from tests.support.gateway import ADMIN_KEY

ROUTE, CANARY = "helpdesk", "llama3.2:1b"
ANSWERS = 8  # plain answers on the route, before the ones holding markup
CORRECTION = "Restart the router, then wait two minutes before you try again."


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are needed (make test installs them)"
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(argument)
    os.environ["SE_AVOID_STATS"] = "true"  # Selenium Manager is never asked to fetch anything: the driver is given
    session = webdriver.Chrome(service=ChromeService(driver), options=options)
    session.set_page_load_timeout(20)
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("CONSOLE_SCREENSHOTS")
    folder = Path(where) if where else tmp_path_factory.mktemp("console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def traffic(bench: Bench) -> Bench:
    """A guarded route with a canary; answers on it, some holding markup; a thumbs-down with a markup comment,
    a low judge score with a markup reason, a key named with markup, and one answer that is itself markup."""
    flagged_route(bench, ROUTE, CANARY, answers=ANSWERS, min_requests=3)
    url = bench.database_url
    template = on_db(url, lambda e: inference_of(e, bench.sent[2]))
    assert template is not None
    marked = {k: v for k, v in template.items() if k != "id"}
    marked.update(request_id=uuid.uuid4().hex, answer=PAYLOADS[0] + PAYLOADS[1], created_at=datetime.now(UTC))
    on_db(url, lambda e: insert_inferences(e, [marked]))
    bench.sent.append(marked["request_id"])
    create_key(bench.gateway, PAYLOADS[1][:90], ("inference",))
    return bench


def inert(browser: WebDriver) -> None:
    """Nothing captured ran on this page: no dialog, no script's mark, no request it made."""
    try:
        text = browser.switch_to.alert.text
    except NoAlertPresentException:
        text = None
    assert text is None, f"a dialog opened: {text!r}"
    assert browser.execute_script("return window.__pwned === undefined"), "a captured script ran"
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [name for name in fetched if "pwned" in name or name.endswith("/x")], fetched


def visit(browser: WebDriver, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, 10).until(lambda b: b.execute_script("return document.readyState") == "complete")


def after(browser: WebDriver, before: str) -> str:
    """Wait until the page left `before`; the new address."""
    WebDriverWait(browser, 10).until(lambda b: b.current_url != before)
    WebDriverWait(browser, 10).until(lambda b: b.execute_script("return document.readyState") == "complete")
    return browser.current_url


def press(browser: WebDriver, *keys: str) -> None:
    webdriver.ActionChains(browser).send_keys(*keys).perform()


def snap(browser: WebDriver, shots: Path, name: str) -> None:
    inert(browser)
    browser.save_screenshot(str(shots / f"{name}.png"))


def sign_in(browser: WebDriver, base: str, key: str) -> None:
    visit(browser, f"{base}/console/login")
    field = browser.find_element(By.ID, "key")
    field.send_keys(key)
    before = browser.current_url
    field.send_keys(Keys.ENTER)
    assert after(browser, before).endswith("/console/review")


def sign_out(browser: WebDriver) -> None:
    before = browser.current_url
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    assert after(browser, before).endswith("/console/login")


def weights(bench: Bench) -> dict[str, int]:
    route = bench.admin("GET", f"/admin/routes/{ROUTE}").json()
    return {v["model"]: v["weight"] for v in route["variants"]}


def test_a_reviewer_works_the_queue_with_the_keyboard_and_the_correction_reaches_the_dataset(
    traffic: Bench, browser: WebDriver, shots: Path, tmp_path: Path
) -> None:
    base = traffic.url
    sign_in(browser, base, traffic.reviewer)
    snap(browser, shots, "01-review-queue")
    assert "thumbs down" in browser.find_element(By.CSS_SELECTOR, "ul.counts").text

    reviewed: list[str] = []
    here = browser.current_url
    press(browser, "n")  # start
    here = after(browser, here)
    snap(browser, shots, "02-review-item")
    for key in ("u", "d"):
        reviewed.append(here.rsplit("/", 1)[1].split("?")[0])
        press(browser, key)
        here = after(browser, here)
    reviewed.append(here.rsplit("/", 1)[1].split("?")[0])
    editor = browser.find_element(By.ID, "correction")
    assert editor.get_attribute("value"), "the editor starts with the answer"
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys(CORRECTION)
    snap(browser, shots, "03-review-correcting")
    webdriver.ActionChains(browser).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
    after(browser, here)

    notes = {f["request_id"]: f for f in feedback_rows(traffic.database_url) if f["key_id"] == traffic.reviewer_id}
    assert [(notes[i]["kind"], notes[i]["value"], notes[i]["text"]) for i in reviewed] == [
        ("rating", 1.0, None),
        ("rating", 0.0, None),
        ("correction", None, CORRECTION),
    ]
    assert {notes[i]["role"] for i in reviewed} == {"reviewer"}
    waiting = httpx.get(
        f"{base}/admin/review/queue", headers={"Authorization": f"Bearer {traffic.reviewer}"}, params={"limit": 200}
    ).json()["data"]
    assert not {row["request_id"] for row in waiting} & set(reviewed), "a reviewed answer left the queue"

    out = tmp_path / "rows.jsonl"
    command = [sys.executable, "-m", "trainer", "dataset", "--database-url", traffic.database_url]
    run = subprocess.run([*command, "--route", ROUTE, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    written = out.read_text() + out.with_name("rows.heldout.jsonl").read_text()
    rows = {r["request_id"]: r for r in map(json.loads, written.splitlines())}
    assert rows[reviewed[2]]["messages"][-1] == {"role": "assistant", "content": CORRECTION}
    assert rows[reviewed[2]]["source"] == "correction" and reviewed[1] not in rows

    visit(browser, f"{base}/console/datasets")
    listed = browser.find_element(By.ID, "datasets").text
    assert ROUTE in listed
    snap(browser, shots, "04-datasets")

    for path in ("/console/keys", "/console/rollouts"):
        visit(browser, f"{base}{path}")
        assert "Not allowed" in browser.find_element(By.TAG_NAME, "h1").text
    snap(browser, shots, "05-reviewer-refused-keys")
    assert not browser.find_elements(By.LINK_TEXT, "Rollouts"), "a reviewer's menu has no admin pages"
    sign_out(browser)


def test_captured_markup_is_text_on_every_page_that_shows_it(traffic: Bench, browser: WebDriver, shots: Path) -> None:
    base = traffic.url
    sign_in(browser, base, ADMIN_KEY)
    marked = traffic.sent[-1]
    visit(browser, f"{base}/console/inferences/{marked}")
    assert PAYLOADS[0] in browser.find_element(By.ID, "answer-text").text
    snap(browser, shots, "06-inference-with-markup")
    asked = traffic.sent[ANSWERS : ANSWERS + len(PAYLOADS)]  # the prompts that are markup
    for payload, request_id in zip(PAYLOADS, asked, strict=True):
        visit(browser, f"{base}/console/inferences/{request_id}")
        inert(browser)
        assert payload in browser.find_element(By.CSS_SELECTOR, ".message.user").text
    visit(browser, f"{base}/console/inferences/{traffic.sent[0]}")
    assert PAYLOADS[1] in browser.find_element(By.TAG_NAME, "aside").text  # the markup comment, as text
    visit(browser, f"{base}/console/inferences/{traffic.sent[1]}")
    assert PAYLOADS[0] in browser.find_element(By.TAG_NAME, "aside").text  # the markup judge reason
    visit(browser, f"{base}/console/inferences?route={ROUTE}")
    assert browser.find_elements(By.CSS_SELECTOR, "#inferences tbody tr")
    snap(browser, shots, "07-inferences")
    visit(browser, f"{base}/console/review")
    snap(browser, shots, "08-review-queue-admin")
    visit(browser, f"{base}/console/keys")
    assert PAYLOADS[1][:40] in browser.find_element(By.ID, "keys").text
    snap(browser, shots, "09-keys")
    sign_out(browser)


def test_an_admin_promotes_the_canary_and_rolls_it_back(traffic: Bench, browser: WebDriver, shots: Path) -> None:
    base = traffic.url
    sign_in(browser, base, ADMIN_KEY)
    visit(browser, f"{base}/console/rollouts")
    section = browser.find_element(By.ID, f"route-{ROUTE}")
    assert "canary" in section.text and "error rate" in section.text
    snap(browser, shots, "10-rollouts")

    def confirm_click(selector: str) -> None:
        browser.find_element(By.XPATH, selector).click()
        WebDriverWait(browser, 5).until(lambda b: _alert(b) is not None)
        browser.switch_to.alert.accept()
        WebDriverWait(browser, 10).until(lambda b: b.execute_script("return document.readyState") == "complete")

    confirm_click(f"//form[input[@name='model' and @value='{CANARY}']]//button")
    WebDriverWait(browser, 10).until(lambda _: weights(traffic) == {MODEL: 0, CANARY: 100})
    WebDriverWait(browser, 10).until(lambda b: "promote" in b.find_element(By.CSS_SELECTOR, "table.history").text)
    latest = browser.find_element(By.CSS_SELECTOR, "table.history tbody tr").text
    assert f"{MODEL} 90%, {CANARY} 10%" in latest and f"{CANARY} 100%" in latest, latest
    snap(browser, shots, "11-rollouts-promoted")
    confirm_click("//button[contains(., 'Roll back')]")
    WebDriverWait(browser, 10).until(lambda _: weights(traffic) == {MODEL: 90, CANARY: 10})
    WebDriverWait(browser, 10).until(lambda b: "rollback" in b.find_element(By.CSS_SELECTOR, "table.history").text)
    snap(browser, shots, "12-rollouts-rolled-back")
    history = traffic.admin("GET", f"/admin/routes/{ROUTE}/history").json()["history"]
    assert [h["why"] for h in history[:2]] == ["rollback", "promote"] and history[0]["who"] == "admin"
    sign_out(browser)


def _alert(browser: WebDriver) -> Any:
    try:
        return browser.switch_to.alert
    except NoAlertPresentException:
        return None
