"""The page as a person uses it, in a real headless Chromium, over grpc-web through Envoy: log in,
search, a streamed chat answer, a notification after a purchase, and the errors a person sees."""
from __future__ import annotations

import uuid

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from services.user import demo
from tests.integration.client import PASSWORD, bearer, forged_key, new_user, token, wait_for

from .conftest import screenshot

UI_TIMEOUT_S = 30


def visible(driver: WebDriver, element_id: str) -> bool:
    return driver.find_element(By.ID, element_id).is_displayed()


def log_in(driver: WebDriver, email: str, password: str = PASSWORD) -> None:
    wait_for(lambda: visible(driver, "login"), what="the login form")
    for field, value in (("email", email), ("password", password)):
        driver.find_element(By.ID, field).clear()       # a sign-out leaves the last ones typed
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()


def logged_in_user(driver: WebDriver, users, prefix: str) -> str:
    """A new account, logged in on the page; returns its token (for checks over gRPC)."""
    email, token = new_user(users, prefix)
    log_in(driver, email)
    wait_for(lambda: visible(driver, "app"), timeout_s=UI_TIMEOUT_S, what="the signed-in page")
    return token


def texts(driver: WebDriver, selector: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def problem(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "problem").text if visible(driver, "problem") else ""


def test_log_in_and_search_the_catalog(browser, users):
    logged_in_user(browser, users, "page-search")
    assert browser.find_element(By.ID, "who-tier").text == "free"
    browser.find_element(By.ID, "query").send_keys("Toy Story")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    titles = wait_for(lambda: texts(browser, "#search-results .title"), timeout_s=UI_TIMEOUT_S,
                      what="search results")
    assert "Toy Story" in titles
    assert not problem(browser)


def test_recommendations_show_their_model_version_and_source(browser, users):
    logged_in_user(browser, users, "page-recs")
    meta = browser.find_element(By.ID, "recs-meta")
    wait_for(lambda: meta.text, timeout_s=UI_TIMEOUT_S, what="recommendations")
    # A new account has no history: popular items, said to be the fallback and why.
    assert meta.get_attribute("data-source") == "FALLBACK"
    assert "(fallback: cold start" in meta.text
    assert len(texts(browser, "#recs-list .title")) == 8


def test_chat_answer_streams_token_by_token(browser, users):
    logged_in_user(browser, users, "page-chat")
    # Record, inside the page, the answer's text length at every change the page makes.
    browser.execute_script("""
        window.seen = [];
        new MutationObserver(() => {
          const answer = document.querySelector('#chat-log .answer:last-of-type');
          if (answer) window.seen.push([answer.dataset.state, answer.textContent.length]);
        }).observe(document.getElementById('chat-log'),
                   {subtree: true, childList: true, characterData: true, attributes: true});
    """)
    browser.find_element(By.ID, "chat-input").send_keys("Recommend a film about toys that come alive.")
    browser.find_element(By.CSS_SELECTOR, "#chat-form button").click()
    answer = browser.find_element(By.CSS_SELECTOR, "#chat-log .answer")
    wait_for(lambda: answer.get_attribute("data-state") != "streaming", timeout_s=90,
             what="the answer to complete")
    assert answer.get_attribute("data-state") == "done", problem(browser)
    assert answer.get_attribute("data-source") == "MODEL"
    seen = browser.execute_script("return window.seen")
    partial = {length for state, length in seen if state == "streaming" and length > 0}
    assert len(partial) >= 3, f"the answer did not grow in steps while streaming: {seen}"
    assert max(partial) <= len(answer.text)
    assert float(answer.get_attribute("data-first-token-ms")) > 0
    screenshot(browser, "page-chat")


def test_stop_ends_a_streaming_answer_and_the_generation(browser, users, mesh):
    from tests.integration.test_chat_lm import generations
    logged_in_user(browser, users, "page-stop")
    cancelled_before = generations(mesh, "cancelled")
    stop = browser.find_element(By.ID, "chat-stop")
    assert not stop.is_displayed()
    browser.find_element(By.ID, "chat-input").send_keys("Write a very long story about every film you know.")
    browser.find_element(By.CSS_SELECTOR, "#chat-form button").click()
    answer = browser.find_element(By.CSS_SELECTOR, "#chat-log .answer")
    wait_for(lambda: len(answer.text) > 0, timeout_s=90, what="the answer to start streaming")
    assert stop.is_displayed()
    stop.click()
    wait_for(lambda: answer.get_attribute("data-state") == "cancelled", timeout_s=UI_TIMEOUT_S,
             what="the answer to stop")
    assert not stop.is_displayed() and not problem(browser)
    stopped_at = len(answer.text)
    wait_for(lambda: generations(mesh, "cancelled") > cancelled_before, timeout_s=UI_TIMEOUT_S,
             what="Triton to count the generation as cancelled")
    assert len(answer.text) == stopped_at     # nothing arrived after Stop
    screenshot(browser, "page-chat-stopped")


def test_a_purchase_shows_a_notification_and_mark_read_reads_it(browser, users, mesh):
    user_token = logged_in_user(browser, users, "page-buy")
    browser.find_element(By.ID, "query").send_keys("Star Wars")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait_for(lambda: texts(browser, "#search-results .title"), timeout_s=UI_TIMEOUT_S,
             what="search results")
    row = browser.find_element(By.CSS_SELECTOR, "#search-results li")
    item_id = row.get_attribute("data-item-id")
    row.find_element(By.TAG_NAME, "button").click()
    wait_for(lambda: browser.find_elements(
        By.CSS_SELECTOR, "#notification-list li[data-kind='user.purchased']"),
        timeout_s=UI_TIMEOUT_S, what="the purchase's notification")
    notification = browser.find_element(By.CSS_SELECTOR, "#notification-list li[data-kind='user.purchased']")
    assert item_id in notification.text
    assert "unread" in notification.get_attribute("class")
    assert row.find_element(By.TAG_NAME, "button").text == "Bought"
    screenshot(browser, "page")
    browser.find_element(By.ID, "mark-read").click()
    wait_for(lambda: browser.find_element(By.ID, "unread").text == "0", timeout_s=UI_TIMEOUT_S,
             what="no unread notifications")
    with mesh.channel() as channel:
        unread = notify_pb2_grpc.NotificationServiceStub(channel).ListNotifications(
            notify_pb2.ListNotificationsRequest(unread_only=True), metadata=bearer(user_token), timeout=5)
    assert not unread.notifications            # read on the server too, not only on the page
    # Logging out leaves nothing of this user for the next one at the same browser.
    browser.find_element(By.ID, "logout").click()
    wait_for(lambda: visible(browser, "login"), what="the login form")
    for listed in ("#search-results li", "#recs-list li", "#notification-list li"):
        assert not browser.find_elements(By.CSS_SELECTOR, listed), listed


def test_create_an_account_on_the_page_and_not_twice(browser):
    email = f"page-new-{uuid.uuid4().hex[:8]}@example.com"

    def register() -> None:
        browser.find_element(By.CSS_SELECTOR, "#register summary").click()
        browser.find_element(By.ID, "register-name").send_keys("Page User")
        browser.find_element(By.ID, "register-email").send_keys(email)
        browser.find_element(By.ID, "register-password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "#register-form button").click()

    register()
    wait_for(lambda: visible(browser, "app"), timeout_s=UI_TIMEOUT_S, what="the new account's page")
    assert browser.find_element(By.ID, "who-name").text == "Page User"
    browser.find_element(By.ID, "logout").click()
    browser.refresh()
    register()
    wait_for(lambda: problem(browser), timeout_s=UI_TIMEOUT_S, what="the taken-email error")
    assert "already registered" in problem(browser)
    assert not visible(browser, "app")


def test_a_wrong_password_is_said_plainly(browser, users):
    email, _ = new_user(users, "page-wrong")
    log_in(browser, email, "not the password")
    wait_for(lambda: problem(browser), timeout_s=UI_TIMEOUT_S, what="the login error")
    assert problem(browser) == "Wrong email or password."
    assert visible(browser, "login") and not visible(browser, "app")


def test_a_forged_token_brings_back_the_login_screen(browser, mesh):
    browser.execute_script("sessionStorage.setItem('aimesh.token', arguments[0])",
                           token(mesh, key=forged_key()))
    browser.refresh()
    wait_for(lambda: problem(browser), timeout_s=UI_TIMEOUT_S, what="the session error")
    assert "log in again" in problem(browser)
    assert visible(browser, "login") and not visible(browser, "app")
    assert browser.execute_script("return sessionStorage.getItem('aimesh.token')") is None


def test_an_expired_token_brings_back_the_login_screen(browser, users, mesh):
    logged_in_user(browser, users, "page-expired")
    browser.execute_script("sessionStorage.setItem('aimesh.token', arguments[0])",
                           token(mesh, expires_in=-120))
    browser.find_element(By.ID, "query").send_keys("Alien")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait_for(lambda: visible(browser, "login"), timeout_s=UI_TIMEOUT_S, what="the login screen")
    assert "log in again" in problem(browser)


def test_the_rate_limit_is_said_plainly(browser, users):
    # tests/topology.yaml gives free users 4 recommendations a minute; signing in used one.
    logged_in_user(browser, users, "page-limit")
    refresh = browser.find_element(By.ID, "recs-refresh")

    def limited() -> bool:
        if "rate limit" in problem(browser):
            return True
        refresh.click()
        return False

    wait_for(limited, timeout_s=UI_TIMEOUT_S, interval_s=0.5, what="the rate-limit message")
    assert visible(browser, "app")            # still signed in


def test_the_operations_view_is_an_admins_only(browser, users, mesh):
    logged_in_user(browser, users, "page-ops")          # a user: no Operations view
    assert not visible(browser, "operations")
    browser.find_element(By.ID, "logout").click()
    log_in(browser, "admin@demo.aimesh", demo.PASSWORD)
    wait_for(lambda: visible(browser, "operations"), timeout_s=UI_TIMEOUT_S, what="the Operations view")
    routes = wait_for(lambda: texts(browser, "#ops-routes tbody td:first-child"), timeout_s=UI_TIMEOUT_S,
                      what="the routes")
    assert "recommend.Recommend" in routes and "chat.Ask" in routes
    assert texts(browser, "#ops-routes thead th") == ["route", "calls/s", "p50 ms", "p99 ms", "errors",
                                                       "fallbacks", "SLO", "status"]
    assert "recommend: recommend-v1 90%, recommend-v2 10%" in texts(browser, "#ops-canary li")
    assert "recommender" in texts(browser, "#ops-models tbody td:first-child")
    screenshot(browser, "operations")
    assert not problem(browser)
