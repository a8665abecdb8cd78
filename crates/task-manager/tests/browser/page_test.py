"""The task manager's web page in Chromium, driven by Playwright (run by tests/browser.rs).

    page_test.py open  URL FILES SCREENSHOTS         the page on a server without tokens
    page_test.py token URL FILES SCREENSHOTS TOKEN   the page on a server that needs TOKEN
    page_test.py queued URL FILES SCREENSHOTS        a server with a queue and no worker: the
                                                     test reports the task's events itself

FILES holds plays.csv (the seed example), expected.csv (its aggregate), bad_plays.csv (plays
that are not a number on line 3) and many_plays.csv (the seed's rows many times over).
Screenshots of each state go to SCREENSHOTS.
Chromium is the system's (CHROMIUM, default /usr/bin/chromium): nothing is downloaded.
Exits non-zero, with the reason, on the first check that fails.
"""

import os
import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Longest wait for an upload or a task of the test to end (a guard against hangs).
TASK_TIMEOUT_MS = 30_000


def log(message):
    print(message, flush=True)


class Run:
    """One browser page on the server at `url`, with the test's files and screenshots."""

    def __init__(self, browser, url, files, screenshots):
        self.url = url.rstrip("/")
        self.files = Path(files)
        self.screenshots = Path(screenshots)
        self.context = browser.new_context(
            accept_downloads=True, viewport={"width": 1000, "height": 900}
        )
        self.page = self.context.new_page()
        self.console_errors = []
        self.page.on(
            "console",
            lambda m: self.console_errors.append(m.text) if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))

    def screenshot(self, name):
        path = self.screenshots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        log(f"screenshot {path}")

    def open(self):
        """Loads the page; checks its headers and those of its script, style sheet and icon."""
        response = self.page.goto(self.url + "/")
        assert response is not None and response.status == 200, f"GET / answered {response}"
        headers = response.headers
        assert headers["content-type"] == "text/html; charset=utf-8", headers
        assert "default-src 'self'" in headers["content-security-policy"], headers
        assert "cache-control" in headers, headers
        assets = [
            ("/page.js", "text/javascript"),
            ("/page.css", "text/css"),
            ("/favicon.svg", "image/svg+xml"),
        ]
        for path, kind in assets:
            asset = self.page.request.get(self.url + path)
            assert asset.status == 200, f"GET {path}: {asset.status}"
            assert asset.headers["content-type"].startswith(kind), asset.headers
            assert "cache-control" in asset.headers, asset.headers
        expect(self.page).to_have_title("Play-count aggregator")

    def start_upload(self, name):
        """Chooses FILES/name and presses Upload; returns the id of the task shown before."""
        before = self.page.locator("#current-task").get_attribute("data-task-id")
        self.page.get_by_label("Choose a CSV file").set_input_files(str(self.files / name))
        expect(self.page.locator("#file-name")).to_contain_text(name)
        self.page.get_by_role("button", name="Upload").click()
        return before

    def drop_file(self, name):
        """Drops FILES/name on the drop zone and presses Upload; returns the id of the task
        shown before."""
        before = self.page.locator("#current-task").get_attribute("data-task-id")
        text = (self.files / name).read_text(encoding="utf-8")
        data = self.page.evaluate_handle(
            """([name, text]) => {
                const data = new DataTransfer();
                data.items.add(new File([text], name, { type: 'text/csv' }));
                return data;
            }""",
            [name, text],
        )
        zone = self.page.locator("#drop-zone")
        zone.dispatch_event("dragenter", {"dataTransfer": data})
        zone.dispatch_event("drop", {"dataTransfer": data})
        expect(self.page.locator("#file-name")).to_contain_text(name)
        self.page.get_by_role("button", name="Upload").click()
        return before

    def new_task(self, before):
        """Waits for the page to show a task other than `before`; returns its id."""
        self.page.wait_for_function(
            """before => {
                const id = document.getElementById('current-task').dataset.taskId;
                return id !== undefined && id !== before;
            }""",
            arg=before,
            timeout=TASK_TIMEOUT_MS,
        )
        return self.page.locator("#current-task").get_attribute("data-task-id")

    def upload(self, name):
        """Uploads FILES/name through the page; returns the id of the task it then shows."""
        return self.new_task(self.start_upload(name))

    def wait_for(self, task_id, status, headers=None):
        """Waits until the page shows the task `status`; returns the API's view of the task."""
        current = self.page.locator(f"#current-task[data-task-id='{task_id}']")
        expect(current).to_have_attribute("data-status", status, timeout=TASK_TIMEOUT_MS)
        return self.task_json(task_id, headers)

    def task_json(self, task_id, headers=None):
        response = self.page.request.get(
            f"{self.url}/v1/tasks/{task_id}", headers=headers or {}
        )
        assert response.status == 200, f"task {task_id}: {response.status} {response.text()}"
        return response.json()

    def download_through_link(self, link):
        """Clicks `link` and returns the saved file's text."""
        with self.page.expect_download() as info:
            link.click()
        download = info.value
        failure = download.failure()
        assert failure is None, f"the download failed: {failure}"
        return Path(download.path()).read_text(encoding="utf-8"), download.suggested_filename

    def check_done(self, task_id, task):
        """The DONE task on the page: rows, groups, the link to its result, which downloads the
        expected rows; and its row in the task list."""
        assert task["status"] == "DONE", task
        current = self.page.locator("#current-task")
        expect(current).to_contain_text("DONE")
        expect(self.page.locator("#message")).to_contain_text("7 rows read, 4 groups written")
        link = current.locator("a.download")
        expect(link).to_have_attribute("href", task["download_link"])
        text, name = self.download_through_link(link)
        expected = (self.files / "expected.csv").read_text(encoding="utf-8")
        assert text == expected, f"downloaded {text!r}, expected {expected!r}"
        assert name == "plays_aggregated.csv", name
        log(f"downloaded {name}: {len(text.splitlines()) - 1} rows as expected")
        row = self.page.locator(f"#tasks tr[data-task-id='{task_id}']")
        expect(row).to_have_attribute("data-status", "DONE", timeout=TASK_TIMEOUT_MS)
        expect(row.locator("a.download")).to_have_attribute("href", task["download_link"])

    def assert_clean_console(self, allowed=()):
        unexpected = [
            e for e in self.console_errors if not any(part in e for part in allowed)
        ]
        assert not unexpected, f"errors in the browser's console: {unexpected}"


def scenario_open(run):
    run.open()
    page = run.page
    expect(page.locator("#tasks-message")).to_have_text("No task yet.")
    # The file input (behind the drop zone) is reachable from the keyboard.
    focused = []
    for _ in range(6):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
    assert "file" in focused, f"the file input is not in the tab order: {focused}"
    token_field = page.get_by_label("Token", exact=True)
    assert token_field.is_hidden(), "the token field shows on a server without tokens"

    # (0) A larger file, its upload slowed down: the progress bar moves, then the task ends.
    cdp = run.context.new_cdp_session(page)
    cdp.send("Network.enable")
    throttle = {"offline": False, "latency": 0, "downloadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**throttle, "uploadThroughput": 150_000})
    page.evaluate(
        """() => {
            const bar = document.getElementById('upload-progress');
            window.uploadProgress = [];
            new MutationObserver(() => window.uploadProgress.push(bar.value))
                .observe(bar, { attributes: true });
        }"""
    )
    before = run.start_upload("many_plays.csv")
    expect(page.locator("#message")).to_contain_text("Uploading many_plays.csv")
    page.wait_for_function(
        """() => {
            const bar = document.getElementById('upload-progress');
            return !bar.hidden && bar.value >= 20 && bar.value < 100;
        }""",
        timeout=TASK_TIMEOUT_MS,
    )
    run.screenshot("uploading")
    cdp.send("Network.emulateNetworkConditions", {**throttle, "uploadThroughput": -1})
    task_id = run.new_task(before)
    task = run.wait_for(task_id, "DONE")
    seen = page.evaluate("window.uploadProgress")
    assert any(0 < value < 100 for value in seen), f"no progress between 0 and 100: {seen}"
    assert task["rows"] > 1000 and task["groups"] == 4, task
    log(f"many plays: upload progress seen at {sorted(set(seen))[:8]}..., then DONE")

    # (1) The seed example, dropped on the page, downloaded through the page's link.
    task_id = run.new_task(run.drop_file("plays.csv"))
    task = run.wait_for(task_id, "DONE")
    run.check_done(task_id, task)
    run.screenshot("done")
    log(f"seed example: task {task_id} DONE, {task['rows']} rows, {task['groups']} groups")

    # (2) Plays that are not a number on line 3: the engine's message, on the card and the list.
    task_id = run.upload("bad_plays.csv")
    task = run.wait_for(task_id, "FAILED")
    current = page.locator("#current-task")
    error = task.get("error") or ""
    assert "line 3" in error, f"the engine's message does not name line 3: {task}"
    expect(current.locator(".error")).to_have_text(error)
    expect(current.locator("a.download")).to_have_count(0)
    expect(page.locator("#message")).to_contain_text("failed: " + error)
    row = page.locator(f"#tasks tr[data-task-id='{task_id}']")
    expect(row).to_have_attribute("data-status", "FAILED", timeout=TASK_TIMEOUT_MS)
    expect(row.locator("td.error")).to_have_text(error)
    # Newest first.
    expect(page.locator("#tasks tbody tr").first).to_have_attribute("data-task-id", task_id)
    expect(page.locator("#tasks tbody tr")).to_have_count(3)
    run.screenshot("failed")
    log(f"bad plays: task {task_id} FAILED: {error}")
    run.assert_clean_console()


def scenario_token(run, token):
    run.open()
    page = run.page
    # The page loads without a token; its first API call gets 401 and it asks for one.
    field = page.get_by_label("Token", exact=True)
    expect(field).to_be_visible()
    expect(page.locator("#token-message")).to_contain_text("needs an API token")
    run.screenshot("token")

    # A wrong token is refused, and said so.
    field.fill("not-the-token")
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#token-message")).to_contain_text("refused this token")

    field.fill(token)
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#tasks-message")).to_have_text("No task yet.")
    expect(page.locator("#token-message")).to_have_text("A token is set for this tab.")
    kept = page.evaluate("[sessionStorage.length, localStorage.length, document.cookie]")
    assert kept == [1, 0, ""], f"the token is kept elsewhere than sessionStorage: {kept}"

    task_id = run.upload("plays.csv")
    task = run.wait_for(task_id, "DONE", {"Authorization": f"Bearer {token}"})
    # The link's href is the API's, which needs the header: the page fetches it with the token.
    run.check_done(task_id, task)
    run.screenshot("token-done")
    log(f"with the token: task {task_id} DONE and downloaded")
    # The refused requests before the token was set.
    run.assert_clean_console(allowed=("401",))


def scenario_queued(run):
    """A task that waits in the queue, then runs: the test plays the worker, reporting its
    progress and its end on the workers' callback."""
    run.open()
    page = run.page
    task_id = run.upload("plays.csv")
    run.wait_for(task_id, "RECEIVED")
    expect(page.locator("#message")).to_contain_text("waits to be processed")

    def report(event):
        response = page.request.post(
            f"{run.url}/internal/v1/tasks/{task_id}/events", data=event
        )
        assert response.status == 200, f"{event}: {response.status} {response.text()}"

    report({"event": "started"})
    report({"event": "progress", "progress": 0.4, "rows": 3})
    run.wait_for(task_id, "PROCESSING")
    current = page.locator("#current-task")
    expect(current).to_contain_text("40 %")
    expect(current.locator("progress")).to_have_attribute("value", "40")
    expect(page.locator("#message")).to_contain_text("is being processed: 40 %")
    row = page.locator(f"#tasks tr[data-task-id='{task_id}']")
    expect(row).to_have_attribute("data-status", "PROCESSING", timeout=TASK_TIMEOUT_MS)
    run.screenshot("processing")

    report({"event": "failed", "error": "the worker stopped: disk full"})
    run.wait_for(task_id, "FAILED")
    expect(current.locator(".error")).to_have_text("the worker stopped: disk full")
    log(f"queued: task {task_id} RECEIVED, PROCESSING at 40 %, then FAILED")
    run.assert_clean_console()


def main(argv):
    arguments = {"open": 5, "token": 6, "queued": 5}
    if len(argv) < 2 or arguments.get(argv[1]) != len(argv):
        sys.exit(__doc__)
    scenario, url, files, screenshots = argv[1:5]
    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            run = Run(browser, url, files, screenshots)
            if scenario == "open":
                scenario_open(run)
            elif scenario == "queued":
                scenario_queued(run)
            else:
                scenario_token(run, argv[5])
        finally:
            browser.close()
    log(f"{scenario}: passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main(sys.argv)
