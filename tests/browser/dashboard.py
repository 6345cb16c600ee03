"""Drive the dashboard in a real headless Chromium (Debian's chromium, chromium-driver, python3-selenium).

Run by tests/integration/test_dashboard.py as `/usr/bin/python3 tests/browser/dashboard.py ARGS`: Debian's selenium
is seen by the system python only. It logs in, checks that the page shows the queues, the workers and the dead
jobs and that the chart's y axis is round numbers, opens a job's detail, presses retry on a dead job, saves a
screenshot, and (with --read-only-token) checks that a read-only token sees no buttons. It prints one JSON line of
what it measured; a failed check exits 1 with one line saying which.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 20.0  # seconds any one thing may take to appear


class Failed(Exception):
    pass


def browser() -> WebDriver:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1100",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)  # (no Selenium Manager)


def until(driver: WebDriver, what: str, check: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
    """The first true value of `check`, asked again while false or while the page redraws what it looked at (the
    live summary redraws the tables every second)."""
    wait = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return wait.until(lambda d: check(d))
    except TimeoutException:
        raise Failed(f"timed out after {timeout:g}s waiting for {what}") from None


def click(driver: WebDriver, css: str, what: str) -> None:
    """Click the element, found again if the page redrew it in between."""
    def clicked(d: WebDriver) -> bool:
        d.find_element(By.CSS_SELECTOR, css).click()
        return True
    until(driver, what, clicked)


# Read in one script each, so that a table the live summary redraws meanwhile is never half read (stale).
def text(driver: WebDriver, css: str) -> str:
    return str(driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText.trim()).join(' ')", css))


def login(driver: WebDriver, url: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(url + "/")
    until(driver, "the login form", lambda d: d.find_elements(By.ID, "token"))
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-button").click()


def refused_login(driver: WebDriver, url: str, token: str) -> str:
    """A bad token answers the form again, with why."""
    login(driver, url, token)
    return str(until(driver, "the login form's error", lambda d: text(d, "#login-error")))


def page_loaded(driver: WebDriver) -> None:
    until(driver, "the live summary (the badge says live)", lambda d: text(d, "#live") == "live")


def check_overview(driver: WebDriver, queue: str, delayed: int, worker: str) -> None:
    """The queue's row shows its delayed jobs; the worker's row says it is live, with its RSS."""
    def queue_row(d: WebDriver) -> bool:
        cells = text(d, f'#queues tr[data-queue="{queue}"] td').split(" ")
        return len(cells) > 2 and cells[2] == str(delayed)
    until(driver, f"queue {queue} with {delayed} delayed job(s)", queue_row)
    until(driver, f"worker {worker} live", lambda d: "live" in text(d, f'#workers tr[data-worker="{worker}"]'))
    if "iB" not in text(driver, f'#workers tr[data-worker="{worker}"]'):
        raise Failed(f"worker {worker}'s row shows no RSS: {text(driver, '#workers tbody')!r}")


def check_pause(driver: WebDriver, queue: str) -> None:
    """Pause the queue with its button, see it paused, resume it."""
    row = f'#queues tr[data-queue="{queue}"]'
    click(driver, f"{row} button.pause", f"queue {queue}'s pause button")
    until(driver, f"queue {queue} paused", lambda d: "paused" in text(d, row) and d.find_elements(
        By.CSS_SELECTOR, f"{row} button.resume"))
    click(driver, f"{row} button.resume", f"queue {queue}'s resume button")
    until(driver, f"queue {queue} active again", lambda d: "active" in text(d, row))


def dead_ids(driver: WebDriver) -> list[int]:
    return [int(i) for i in driver.execute_script(
        "return [...document.querySelectorAll('#dead tbody tr[data-job]')].map(e => e.dataset.job)")]


def check_detail(driver: WebDriver, job_id: int, error: str) -> None:
    click(driver, f'#dead tr[data-job="{job_id}"] a.job-link', f"job {job_id}'s link")
    until(driver, f"job {job_id}'s detail", lambda d: d.find_element(By.ID, "job").is_displayed()
          and text(d, "#job-title") == f"Job #{job_id}")
    if error not in text(driver, "#job-fields"):
        raise Failed(f"job {job_id}'s detail does not show its error {error!r}: {text(driver, '#job-fields')!r}")
    driver.find_element(By.ID, "job-close").click()
    until(driver, "the detail to close", lambda d: not d.find_element(By.ID, "job").is_displayed())


def press_retry(driver: WebDriver, job_id: int) -> None:
    click(driver, f'#dead tr[data-job="{job_id}"] button.retry', f"job {job_id}'s retry button")
    until(driver, f"'job {job_id} retried'", lambda d: text(d, "#message") == f"job {job_id} retried")
    until(driver, f"job {job_id} to leave the dead jobs", lambda d: job_id not in dead_ids(d))


def first_load_bytes(driver: WebDriver) -> dict[str, int]:
    """Bytes the browser received for the page, its files and its first API answers (the live stream, which never
    ends, is not among the finished resources)."""
    entries = driver.execute_script(
        "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".map(e => [e.name, e.transferSize, e.encodedBodySize])")
    return {str(name).split("/", 3)[-1] or "/": int(size) for name, size, _body in entries}


def buttons(driver: WebDriver) -> list[str]:
    """The action buttons shown (retry, pause, resume, retry all)."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll('button.act')].filter(b => b.offsetParent !== null)"
        ".map(b => b.textContent)"))


def console_errors(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


# The chart drawn (draw(), app.js) for each highest rate, and once for the live points, recording the numbers it
# writes on the y axis (the x axis says "-120s" ... "now"); the live points are put back and drawn again after.
AXIS = """
const fillText = CanvasRenderingContext2D.prototype.fillText, saved = view.chart.points, drawn = [];
CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
  drawn.push(String(text));
  return fillText.call(this, text, ...rest);
};
const labels = (points) => {
  view.chart.points = points;
  drawn.length = 0;
  draw();
  return drawn.filter((t) => !/s$|^now$/.test(t));
};
try {
  const out = arguments[0].map((most) => labels([{time: 1000, rates: {done: most, dead: 0, cancelled: 0}}]));
  return [...out, labels(saved)];
} finally {
  CanvasRenderingContext2D.prototype.fillText = fillText;
  view.chart.points = saved;
  draw();
}
"""
RATES = (0.0, 0.4, 0.8, 1.0, 3.0, 4.6, 7.0, 12.0, 23.0, 130.0, 1234.5)  # jobs per second at the chart's top


def nice_axis(labels: list[str], most: float) -> bool:
    """Whole numbers from 0 up past `most` in even steps of 1, 2 or 5 times a power of ten, a few of them."""
    if not labels or not all(re.fullmatch(r"0|[1-9]\d*", t) for t in labels):
        return False
    values = [int(t) for t in labels]
    step = values[1] - values[0] if len(values) > 1 else 0
    even = values == [i * step for i in range(len(values))]
    return even and re.fullmatch(r"[125]0*", str(step)) is not None and values[-1] >= most and len(values) <= 7


def check_chart_axis(driver: WebDriver) -> dict[str, list[str]]:
    """The chart's y axis is round: whole jobs per second (0, 1, 2 ... at low rates), steps of 1, 2 or 5."""
    *drawn, now = driver.execute_script(AXIS, list(RATES))
    axes = {f"{most:g}": list(labels) for most, labels in zip(RATES, drawn, strict=True)}
    wrong = {most: labels for most, labels in axes.items() if not nice_axis(labels, float(most))}
    if not nice_axis(now, 0.0):
        wrong["the live rates"] = now
    if wrong:
        raise Failed(f"the chart's y axis is not round numbers (at the highest rate: labels): {wrong}")
    return axes


def check_pages(driver: WebDriver) -> None:
    """More than a page of dead jobs: "older" shows the next 20 (ids below the last), "newer" comes back."""
    first = dead_ids(driver)
    driver.find_element(By.ID, "older").click()
    until(driver, "the older page", lambda d: dead_ids(d) and max(dead_ids(d)) < min(first))
    driver.find_element(By.ID, "newer").click()
    until(driver, "the newest page again", lambda d: dead_ids(d) == first)


def retry_all(driver: WebDriver, task: str, count: int) -> None:
    """Filter the dead jobs by task and retry them all: one request, after the browser's confirm()."""
    driver.find_element(By.ID, "filter-task").send_keys(task)
    driver.find_element(By.CSS_SELECTOR, "#dead-filter button[type=submit]").click()
    until(driver, f"only task {task}'s dead jobs",
          lambda d: set(text(d, "#dead tbody tr[data-job] td:nth-child(2)").split(" ")) == {task})
    driver.find_element(By.ID, "retry-all").click()
    until(driver, "the confirm dialog", lambda d: d.switch_to.alert).accept()
    until(driver, f"'{count} job(s) retried'", lambda d: text(d, "#message") == f"{count} job(s) retried")
    driver.find_element(By.ID, "filter-task").clear()
    driver.find_element(By.CSS_SELECTOR, "#dead-filter button[type=submit]").click()


def read_only(driver: WebDriver, url: str, token: str) -> list[str]:
    """Log out, log in with a read-only token: the page shows the jobs, and not one button."""
    driver.find_element(By.ID, "logout").click()
    until(driver, "the login form after logging out", lambda d: d.find_elements(By.ID, "token"))
    login(driver, url, token)
    page_loaded(driver)
    until(driver, "the dead jobs as read-only", lambda d: dead_ids(d))
    until(driver, "read-only in the header", lambda d: "read-only" in text(d, "#who"))
    shown = buttons(driver)
    if shown:
        raise Failed(f"a read-only token sees buttons: {shown}")
    return shown


def member(driver: WebDriver, url: str, token: str, own: int) -> str:
    """Log in as a member of group tq who is no admin: no pause or resume, Retry on its own dead job alone, and
    "Retry all" says how many it was refused."""
    driver.find_element(By.ID, "logout").click()
    until(driver, "the login form after logging out", lambda d: d.find_elements(By.ID, "token"))
    login(driver, url, token)
    page_loaded(driver)
    until(driver, f"its own dead job {own}", lambda d: own in dead_ids(d))
    shown = driver.execute_script("return [...document.querySelectorAll('button.act')].filter(b => b.offsetParent "
                                  "!== null).map(b => (b.closest('tr[data-job]') || {dataset: {}}).dataset.job || "
                                  "b.textContent)")
    if sorted(shown) != sorted([str(own), "Retry all dead (filtered)"]):
        raise Failed(f"a member who is no admin sees buttons for what it may not do: {shown}")
    driver.find_element(By.ID, "retry-all").click()
    until(driver, "the confirm dialog", lambda d: d.switch_to.alert).accept()
    said = until(driver, "retry all's answer", lambda d: text(d, "#message"))
    if not re.fullmatch(r"1 job\(s\) retried; [1-9]\d* matching job\(s\) are not yours to change", said):
        raise Failed(f"retry all as a member says {said!r}")
    return str(said)


RIGHTS_WAIT = WAIT + 5  # the page reads what it may do again every 5 s


def step(name: str) -> None:
    """Have the test change something outside the browser (test_dashboard.py: `steps`), and wait until it did."""
    print(f"step {name}", flush=True)
    if sys.stdin.readline().strip() != "done":
        raise Failed(f"the test did not do step {name!r}")


STEERING = ["pause", "retry of another's job"]


def steering(driver: WebDriver, own: int) -> list[str]:
    """What the page offers the member of what only an admin may: pause, Retry on another's dead job."""
    others = driver.execute_script("return [...document.querySelectorAll('#dead tr[data-job] button.retry')]"
                                   ".map(b => Number(b.closest('tr').dataset.job)).filter(id => id !== arguments[0])",
                                   own)
    pause = driver.find_elements(By.CSS_SELECTOR, "#queues button.pause")
    return [what for what, shown in zip(STEERING, (pause, others), strict=True) if shown]


def rights_change(driver: WebDriver, own: int) -> str:
    """The member's group made an admin group mid-session (tq-host reloaded): the page offers pause and Retry on
    others' jobs without a reload, and takes them back when it is no more. Then, the page's rights stale (its
    re-reads stopped), an admin's button it still shows is refused (403): it says why and takes the buttons back."""
    step("admin")
    until(driver, "pause and Retry on others' jobs for a member made admin",
          lambda d: steering(d, own) == STEERING, RIGHTS_WAIT)
    step("no-admin")
    until(driver, "no pause or Retry on others' jobs once no admin", lambda d: not steering(d, own), RIGHTS_WAIT)
    step("admin")
    until(driver, "pause and Retry on others' jobs for an admin again",
          lambda d: steering(d, own) == STEERING, RIGHTS_WAIT)
    until(driver, "the page's re-reads stopped (no re-read but the one a refusal makes)",
          lambda d: d.execute_script("view.rights.every = Infinity; return !view.rights.loading"))
    step("no-admin")
    click(driver, "#queues button.pause", "the pause button the page still shows")
    said = str(until(driver, "the refusal said", lambda d: "permission denied" in text(d, "#message")
                     and text(d, "#message")))
    until(driver, "no pause or Retry on others' jobs after the refusal", lambda d: not steering(d, own))
    return said


def run(args: argparse.Namespace, driver: WebDriver) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.bad_token:
        out["refused_login"] = refused_login(driver, args.url, args.bad_token)
    login(driver, args.url, args.token)
    page_loaded(driver)
    driver.get_log("browser")  # (read, so forgotten: the refused login's 403 is logged there)
    check_overview(driver, args.queue, args.delayed, args.worker)
    until(driver, f"dead jobs {args.dead}", lambda d: set(args.dead) <= set(dead_ids(d)))
    if not buttons(driver):
        raise Failed("a token that may act sees no buttons")
    out["first_load_bytes"] = first_load_bytes(driver)
    out["chart_axis"] = check_chart_axis(driver)
    check_pause(driver, args.queue)
    check_detail(driver, args.retry, args.error)
    press_retry(driver, args.retry)
    check_pages(driver)
    until(driver, "the chart's legend to show jobs done", lambda d: "done 0.0/s" not in text(d, "#legend"))
    driver.save_screenshot(args.screenshot)
    out["screenshot"] = args.screenshot
    if args.bulk_task:
        retry_all(driver, args.bulk_task, args.bulk_count)
    errors = console_errors(driver)
    if errors:
        raise Failed(f"the browser's console has errors: {errors}")
    if args.read_only_token:
        out["read_only_buttons"] = read_only(driver, args.url, args.read_only_token)
    if args.member_token:
        out["member_retry_all"] = member(driver, args.url, args.member_token, args.member_job)
        if args.rights_change:
            out["refused_pause"] = rights_change(driver, args.member_job)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--read-only-token")
    parser.add_argument("--bad-token")
    parser.add_argument("--member-token", help="a member of group tq who is no admin ...")
    parser.add_argument("--member-job", type=int, help="... and its dead job")
    parser.add_argument("--rights-change", action="store_true",
                        help="then have the test make the member an admin and not (step admin, step no-admin)")
    parser.add_argument("--queue", required=True, help="a queue the page must show ...")
    parser.add_argument("--delayed", type=int, required=True, help="... with this many delayed jobs")
    parser.add_argument("--worker", required=True, help="a worker instance the page must show live")
    parser.add_argument("--dead", type=int, nargs="+", required=True, help="ids the dead jobs must show")
    parser.add_argument("--retry", type=int, required=True, help="the dead job to open and retry")
    parser.add_argument("--error", required=True, help="text of that job's error, which its detail shows")
    parser.add_argument("--bulk-task", help="then retry all dead jobs of this task (filtered, one request) ...")
    parser.add_argument("--bulk-count", type=int, default=0, help="... which are this many")
    parser.add_argument("--screenshot", required=True)
    args = parser.parse_args()
    try:
        driver = browser()
    except WebDriverException as e:
        print(f"dashboard.py: cannot start Chromium: {e.msg}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(run(args, driver)))
        return 0
    except (Failed, WebDriverException) as e:
        shot = args.screenshot.replace(".png", "-failed.png")
        driver.save_screenshot(shot)
        print(f"dashboard.py: {e} (screenshot {shot})", file=sys.stderr)
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
