#!/usr/bin/env python3
"""Uses `dycoke serve`'s chat page in headless Chromium, as a person would.

usage: browser.py URL VIDEO SCREENSHOT.png

Opens the page, attaches VIDEO, asks a question, waits for the streamed answer and its time to
first token, checks the browser logged no errors, saves a screenshot, then asks a follow-up and
waits for the second answer. Needs Debian's chromium and chromium-driver and the `selenium`
package; Selenium's own driver download is never used. Exits non-zero on any failure.
"""

import os
import re
import sys
import time

# Without this, Selenium Manager may try to fetch a browser or driver from the network.
os.environ["SE_OFFLINE"] = "true"

from client_checks import Failure, run  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Bounds for one answer and for the whole run (the test must stay under two minutes).
ANSWER_TIMEOUT_S = 45
TOTAL_TIMEOUT_S = 110
FRAMES = 8
TTFT = re.compile(r"TTFT \d+(\.\d+)? s")


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900",
                "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def answers(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#messages .answer")


def wait_for_answer(driver, index):
    """Waits until answer number `index` (from 0) is done; returns (text, stats text)."""

    def finished(d):
        found = answers(d)
        if len(found) <= index:
            return False
        answer = found[index]
        return answer if "done" in answer.get_attribute("class").split() else False

    try:
        answer = WebDriverWait(driver, ANSWER_TIMEOUT_S, poll_frequency=0.2).until(finished)
    except TimeoutException:
        found = answers(driver)
        shown = found[index].text if len(found) > index else "(no answer element)"
        raise Failure(f"answer {index + 1} did not finish within {ANSWER_TIMEOUT_S} s; it shows {shown!r}")
    box = answer.find_element(By.XPATH, "..")
    stats = box.find_element(By.CSS_SELECTOR, ".stats")
    errors = box.find_elements(By.CSS_SELECTOR, ".error")
    if "error" in answer.get_attribute("class").split() or any(e.text for e in errors):
        raise Failure(f"answer {index + 1} ended with an error: {' '.join(e.text for e in errors)!r}")
    text = answer.text
    if not text.strip():
        raise Failure(f"answer {index + 1} is empty (stats: {stats.text!r})")
    if not TTFT.search(stats.text) or not stats.get_attribute("data-ttft-ms"):
        raise Failure(f"answer {index + 1} shows no time to first token: {stats.text!r}")
    return text, stats.text


def ask(driver, question, submit_with_enter):
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    if submit_with_enter:
        box.send_keys(Keys.ENTER)
    else:
        driver.find_element(By.ID, "send").click()


def console_errors(driver):
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def use_page(url, video, screenshot):
    started = time.monotonic()
    driver = browser()
    try:
        driver.set_page_load_timeout(30)
        driver.get(url.rstrip("/") + "/")
        if "dycoke" not in driver.title:
            raise Failure(f"page title is {driver.title!r}")
        for element_id in ("file", "question", "send", "stop", "new", "messages"):
            driver.find_element(By.ID, element_id)
        # The page shows the server's health and model once it has asked for them.
        WebDriverWait(driver, 15).until(lambda d: "ready" in d.find_element(By.ID, "health").text)
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "model").text not in ("", "?"))

        # The settings travel as the request's extensions: the stats must show the frames asked for.
        driver.find_element(By.CSS_SELECTOR, "details > summary").click()
        for element_id, value in (("frames", str(FRAMES)), ("max-tokens", "32")):
            field = driver.find_element(By.ID, element_id)
            field.clear()
            field.send_keys(value)

        driver.find_element(By.ID, "file").send_keys(os.path.abspath(video))
        WebDriverWait(driver, 15).until(lambda d: "attached" in d.find_element(By.ID, "attachment").text)
        ask(driver, "What happens in this video?", submit_with_enter=False)
        text, stats = wait_for_answer(driver, 0)
        print(f"answer 1: {text!r}\n  stats: {stats}")
        if "visual tokens" not in stats or f"{FRAMES} frames" not in stats:
            raise Failure(f"the stats of a video answer do not show {FRAMES} frames and the visual tokens: {stats!r}")

        errors = console_errors(driver)
        if errors:
            raise Failure("the browser logged errors: " + "; ".join(e.get("message", "") for e in errors))
        driver.save_screenshot(screenshot)
        print(f"screenshot: {screenshot}")

        # Enter sends; the second question goes without a video and continues the conversation.
        ask(driver, "Tell me more.", submit_with_enter=True)
        text2, stats2 = wait_for_answer(driver, 1)
        print(f"answer 2: {text2!r}\n  stats: {stats2}")
        if "from cache" not in stats2:
            raise Failure(f"the follow-up's stats show no cached prompt tokens: {stats2!r}")
        if len(answers(driver)) != 2:
            raise Failure(f"{len(answers(driver))} answers on the page, expected 2")
        errors = console_errors(driver)
        if errors:
            raise Failure("the browser logged errors: " + "; ".join(e.get("message", "") for e in errors))

        # A new conversation empties the page.
        driver.find_element(By.ID, "new").click()
        if answers(driver):
            raise Failure("New conversation left the answers on the page")
    finally:
        driver.quit()
    elapsed = time.monotonic() - started
    if elapsed > TOTAL_TIMEOUT_S:
        raise Failure(f"the run took {elapsed:.0f} s, more than {TOTAL_TIMEOUT_S} s")
    print(f"ok ({elapsed:.1f} s)")


def main():
    if len(sys.argv) != 4:
        raise Failure(__doc__.strip().splitlines()[2])
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise Failure(f"{path} is missing (apt-get install chromium chromium-driver)")
    use_page(*sys.argv[1:])


if __name__ == "__main__":
    run(main)
