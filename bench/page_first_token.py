"""Time to the first chat token in the browser vs through the Python client, in one run.

The same question goes, in turns, to ChatService/Ask through the gateway from the Python
client (grpcio's generated stub, gRPC over HTTP/2) and from the page in headless Chromium (grpc-web over
HTTP/1.1, the connect-web client, rendering each delta). Python's figure is the time from the
call to the first delta; the browser's is the page's own (data-first-token-ms: from the send to
the first delta written into the page). Each turn starts a new conversation on both sides
(the page's "New chat"), so both send the same prompt. Both as bob (pro: no rate limit in reach), answers of at
most 256 tokens; only one generation runs at a time (chat_lm's one instance).

Prints figures and asserts none. Runs its own mesh with demo data, by default in
/tmp/aimesh-bench-page-state on AIMESH_PORT_OFFSET=2000 (override with those two variables), and
always brings it down. Run it as bin/aimesh runs the CLI (after `bin/aimesh web`):

  bin/aimesh bench page_first_token
"""
from __future__ import annotations

import shutil
import statistics
import sys
import time

import grpc
from helpers.common import machine
from selenium.webdriver.common.by import By

from aimesh import browser, demo
from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.harness import MeshUnderTest

ROUNDS = 10
WARMUP = 2
USER = "bob@demo.aimesh"
QUESTION = "Which films are about toys that come alive?"
MAX_TOKENS = 256          # the page's default (0 means 256)
TURN_TIMEOUT_S = 120


def python_first_token(chat, metadata) -> float:
    """ms from the call to the first delta; the answer is read to its end."""
    started = time.perf_counter()
    first = None
    request = chat_pb2.AskRequest(message=chat_pb2.UserMessage(text=QUESTION, max_tokens=MAX_TOKENS))
    for reply in chat.Ask(request, metadata=metadata, timeout=TURN_TIMEOUT_S):
        if first is None and reply.WhichOneof("kind") == "delta":
            first = (time.perf_counter() - started) * 1000
    return first


def browser_first_token(driver) -> float:
    """The page's own figure; each turn in a new conversation, as the Python side's."""
    driver.find_element(By.ID, "chat-new").click()
    driver.find_element(By.ID, "chat-input").send_keys(QUESTION)
    driver.find_element(By.CSS_SELECTOR, "#chat-form button").click()
    deadline = time.monotonic() + TURN_TIMEOUT_S
    while True:
        answers = driver.find_elements(By.CSS_SELECTOR, "#chat-log .answer")
        if answers and answers[0].get_attribute("data-state") != "streaming":
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the page's answer did not complete")
        time.sleep(0.05)
    if answers[0].get_attribute("data-state") != "done":
        raise RuntimeError(f"the page's turn failed: {driver.find_element(By.ID, 'problem').text}")
    return float(answers[0].get_attribute("data-first-token-ms"))


def log_in(driver, page: str) -> None:
    driver.get(page)
    if not driver.find_elements(By.ID, "login-form"):
        raise RuntimeError(f"{page} is not the page:\n{driver.page_source[:500]}")
    driver.find_element(By.ID, "email").send_keys(USER)
    driver.find_element(By.ID, "password").send_keys(demo.PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    deadline = time.monotonic() + 30
    while not driver.find_element(By.ID, "app").is_displayed():
        if time.monotonic() > deadline:
            raise TimeoutError("the page did not sign in")
        time.sleep(0.05)


def row(label: str, values: list[float]) -> float:
    p50 = statistics.median(values)
    print(f"  {label:<34} p50 {p50:7.1f} ms   min {min(values):7.1f}   max {max(values):7.1f}")
    return p50


def main() -> int:
    mesh = MeshUnderTest.for_bench(state="/tmp/aimesh-bench-page-state")
    gateway = f"127.0.0.1:{mesh.topo.gateway.edge_port}"
    print(f"aimesh first chat token, page vs Python: state {mesh.state}, "
          f"port offset {mesh.env['AIMESH_PORT_OFFSET']}\nmachine: {machine()}\n")
    shutil.rmtree(mesh.state, ignore_errors=True)
    driver = None
    try:
        print(f"mesh up with demo data in {mesh.up(demo_data=True):.1f} s")
        metadata = [("authorization", f"Bearer {demo.login(gateway, USER)}")]
        driver = browser.open_chromium()
        log_in(driver, f"http://{gateway}/")
        python, page = [], []
        with grpc.insecure_channel(gateway) as channel:
            chat = chat_pb2_grpc.ChatServiceStub(channel)
            for turn in range(WARMUP + ROUNDS):      # interleaved: both see the same machine
                python_ms = python_first_token(chat, metadata)
                page_ms = browser_first_token(driver)
                if turn >= WARMUP:
                    python.append(python_ms)
                    page.append(page_ms)
        print(f"\n{ROUNDS} turns each, interleaved, after {WARMUP} warm-up turns:")
        python_p50 = row("Python client (gRPC, HTTP/2)", python)
        page_p50 = row("page in Chromium (grpc-web)", page)
        print(f"  page / Python (p50)                {page_p50 / python_p50:.2f}x")
    finally:
        if driver:
            driver.quit()
        clean = mesh.down_and_report()
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
