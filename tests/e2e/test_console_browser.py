"""The web console in a real browser: headless Chromium (Debian's chromium and
chromium-driver) through Selenium, against a real manager and a real delegate.

One browser and one cluster serve the whole module (module-scoped fixtures); the steps run
in order in one test, as one operator's session would: accept an invite, enrol in 2FA, log in with a
TOTP code, run a task and watch its log arrive, cancel one, drain a delegate, find the
events in the audit trail, try to inject script everywhere text is shown, and look as a
user without rights. The cluster runs on an event loop of its own in a thread, so the
browser's blocking calls never stall the pipes of the processes it started.

With TETHER_SCREENSHOTS=<dir> set, the main pages are saved there as PNG (docs/console/).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyotp
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from manager.api.console_cookie import COOKIE
from manager.console.security import HEADERS, csrf_token
from tests.e2e.harness import Cluster, Result

pytestmark = [pytest.mark.timeout(300)]

T = TypeVar("T")
PASSWORD = "Ops-password-123"
WAIT = 60.0
XSS_NAME = '<script>window.__xss="name"</script>"><img src=x onerror="window.__xss=1">'
XSS_LINES = (
    "echo '<script>window.__xss=\"log\"</script>'\n"
    'echo \'"><img src=x onerror="window.__xss=2" id=injected>\'\n'
    "echo 'javascript:window.__xss=3'\n"
    "printf '\\033[31mred-text\\033[0m \\033]0;set-title\\007\\033[2J'\n"
    "printf '\\033[1;32mbold-green\\033[0m\\n'\n"
    "printf '\\033]8;;javascript:window.__xss=4\\033\\\\link\\033]8;;\\033\\\\\\n'\n"
)


class Background:
    """An event loop in a thread, for the cluster's processes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class World:
    def __init__(self, bg: Background, cluster: Cluster, root: Path) -> None:
        self.bg = bg
        self.cluster = cluster
        self.root = root
        self.invites: dict[str, str] = {}
        self.secret = ""
        self.task_ids: dict[str, str] = {}

    def tether(self, *args: str) -> Result:
        res = self.bg.run(self.cluster.tether(*args))
        assert res.code == 0, res.stderr
        return res

    def http(
        self, method: str, path: str, *, cookie: str | None = None, **fields: str
    ) -> tuple[int, str, Any]:
        """A plain HTTP client (not the browser): what a forged request can send."""
        ctx = ssl.create_default_context(cafile=str(self.cluster.ca_file))
        data = (
            "&".join(f"{k}={v}" for k, v in fields.items()).encode() if method == "POST" else None
        )
        req = urllib.request.Request(self.cluster.url + path, data=data, method=method)
        req.add_header("Sec-Fetch-Site", "same-origin")
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        if cookie is not None:
            req.add_header("Cookie", f"{COOKIE}={cookie}")
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=ctx), _NoRedirect()
        )
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, resp.read().decode(), resp.headers
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), err.headers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("console")
    bg = Background()
    cluster = Cluster(root=root)
    try:
        bg.run(cluster.start_manager())
        bg.run(cluster.start_delegate("d1", "linux"))
        w = World(bg, cluster, root)
        w.tether("app", "create", "shop")
        w.tether("env", "create", "shop", "qa", "--type", "non_production")
        spec = "apps=all;envs=all;actions=create,read,update,execute"
        w.tether(
            "group", "create", "ops",
            "--permission", "manage_delegates",
            "--permission", "view_audit",
            "--permission", "manage_users",
            "--app-permission", spec,
        )  # fmt: skip
        w.tether("group", "create", "viewers")
        for email, group, name in (
            ("ops@example.com", "ops", "Ops Person"),
            ("viewer@example.com", "viewers", XSS_NAME),
        ):
            res = w.tether("user", "create", email, "--group", group, "--name", name)
            w.invites[email] = res.stdout.strip().splitlines()[-1]
        yield w
    finally:
        bg.run(cluster.close())
        bg.close()


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[WebDriver]:
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="chromium-", dir=world.root)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    # The manager's certificate is from the test's own CA.
    options.accept_insecure_certs = True
    driver = webdriver.Chrome(
        service=Service(executable_path="/usr/bin/chromedriver"), options=options
    )
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, check: Any, what: str, timeout: float = WAIT) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check, message=what)
    except TimeoutException:
        # What the page said, for whoever reads the failure.
        print(driver.current_url, driver.page_source[-3000:])
        raise


def click(driver: WebDriver, css: str, what: str) -> None:
    """Click the element ``css`` names on a page whose rows are live: one replaced between
    the find and the click (the rows' stream swapped them) is found again, not a failure."""

    def clicked(d: WebDriver) -> bool:
        found = d.find_elements(By.CSS_SELECTOR, css)
        if not found:
            return False
        try:
            found[0].click()
        except StaleElementReferenceException:
            return False  # replaced under us: the click did not land; find it again
        return True

    wait(driver, clicked, what)


def text_of(driver: WebDriver, css: str) -> str:
    # Read in one step in the page: a poll may replace the element between a find and a read.
    text: str = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css
    )
    return text


def shot(driver: WebDriver, name: str) -> None:
    where = os.environ.get("TETHER_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(where) / f"{name}.png"))


def assert_nothing_ran(driver: WebDriver) -> None:
    """No injected script ran: no alert, no flag set, no injected element in the page."""
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - reading it is what raises
    assert driver.execute_script("return window.__xss") is None
    assert (
        driver.find_elements(By.CSS_SELECTOR, "img[src='x'], #injected, a[href^='javascript']")
        == []
    )


def submit_script(world: World, driver: WebDriver, script: str) -> str:
    driver.get(world.cluster.url + "/console/tasks")
    form = driver.find_element(By.CSS_SELECTOR, "#submit form")
    form.find_element(By.NAME, "app").send_keys("shop")
    form.find_element(By.NAME, "env").send_keys("qa")
    driver.execute_script(
        "arguments[0].value = arguments[1]", driver.find_element(By.ID, "script"), script
    )
    driver.find_element(By.ID, "submit-task").click()
    wait(driver, lambda d: d.find_elements(By.ID, "task-state"), "the task page")
    return driver.current_url.rsplit("/", 1)[1]


def state_is(state: str) -> Any:
    return lambda d: text_of(d, "#task-state") == state


# -- the steps, in order ---------------------------------------------------------------


def step_signed_out_everything_leads_to_the_login(world: World, browser: WebDriver) -> None:
    browser.get(world.cluster.url + "/")
    wait(browser, lambda d: d.current_url.endswith("/console/login"), "the login page")
    shot(browser, "login")
    status, _, headers = world.http("GET", "/console/tasks")
    assert status == 303
    for name, value in HEADERS.items():
        assert headers[name] == value


def step_invite_enrol_2fa_and_log_in_with_totp(world: World, browser: WebDriver) -> None:
    url = world.cluster.url
    browser.get(f"{url}/console/invite?token={world.invites['ops@example.com']}")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(browser, lambda d: d.current_url.endswith("/console/tasks"), "signed in by the invite")
    browser.get(url + "/console/account")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "totp-enrol").click()
    world.secret = wait(browser, lambda d: text_of(d, "#totp-secret"), "the TOTP key")
    totp = pyotp.TOTP(world.secret)
    browser.find_element(By.ID, "totp-code").send_keys(totp.now())
    browser.find_element(By.ID, "totp-confirm").click()
    wait(browser, lambda d: text_of(d, "#recovery-codes"), "the recovery codes")

    # Sign out ends the session on the server: the old cookie is refused from then on.
    old = browser.get_cookie(COOKIE)
    assert old is not None
    assert old["httpOnly"] is True
    assert old["secure"] is True
    assert old["sameSite"] == "Strict"
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: d.current_url.endswith("/console/login"), "signed out")
    assert world.http("GET", "/console/tasks", cookie=old["value"])[0] == 303

    # Without the code: refused. With it (the next step's: the last one was spent).
    browser.find_element(By.ID, "email").send_keys("ops@example.com")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "sign-in").click()
    wait(browser, lambda d: text_of(d, "#error"), "the refusal")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "totp").send_keys(totp.at(int(__import__("time").time()) + 30))
    browser.find_element(By.ID, "sign-in").click()
    wait(browser, lambda d: d.current_url.endswith("/console/tasks"), "signed in with TOTP")
    assert text_of(browser, "#who") == "ops@example.com"


def step_a_task_log_appears_as_it_is_written(world: World, browser: WebDriver) -> None:
    gate = world.root / "gate"
    script = f"echo first-line\nwhile [ ! -f {gate} ]; do sleep 0.1; done\necho second-line\n"
    task_id = submit_script(world, browser, script)
    world.task_ids["live"] = task_id
    wait(browser, lambda d: "first-line" in text_of(d, "#log"), "the first line, live")
    assert "second-line" not in text_of(browser, "#log")
    shot(browser, "task-running")
    gate.touch()
    wait(browser, lambda d: "second-line" in text_of(d, "#log"), "the second line, live")
    wait(browser, state_is("succeeded"), "the task to succeed")
    assert text_of(browser, "#exit-code") == "0"
    wait(browser, lambda d: d.find_elements(By.ID, "rerun"), "the rerun button")
    shot(browser, "task")


def step_injected_markup_in_scripts_logs_and_names_never_runs(
    world: World, browser: WebDriver
) -> None:
    task_id = submit_script(world, browser, XSS_LINES)
    world.task_ids["xss"] = task_id
    wait(browser, state_is("succeeded"), "the XSS task to finish")
    wait(browser, lambda d: "bold-green" in text_of(d, "#log"), "the last line")
    log = text_of(browser, "#log")
    assert '<script>window.__xss="log"</script>' in log  # shown as text
    assert "onerror" in log
    assert "set-title" not in log  # an OSC title is dropped, not shown
    red = browser.find_elements(By.CSS_SELECTOR, "#log span.fg-red")
    assert [e.text for e in red] == ["red-text"]
    assert browser.find_elements(By.CSS_SELECTOR, "#log span.fg-green.a-bold")
    assert "<script>" in text_of(browser, "#task-script")
    assert_nothing_ran(browser)
    # The audit trail shows the submitted script in its diff: as text.
    browser.get(f"{world.cluster.url}/console/audit?text={task_id}")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".event"), "the submit event")
    browser.find_element(By.CSS_SELECTOR, ".event summary").click()
    # The trail keeps a script as its hash (encryption at rest), never its text.
    diff = text_of(browser, ".event .diff")
    assert '"sha256"' in diff
    assert "onerror" not in diff
    assert_nothing_ran(browser)
    # A user's name.
    browser.get(world.cluster.url + "/console/admin/users")
    assert XSS_NAME in browser.find_element(By.TAG_NAME, "table").text
    assert_nothing_ran(browser)
    shot(browser, "users")
    # A deployment's service name, submitted through the API.
    key = world.cluster.admin_key
    body = {
        "payload": {"type": "shell", "script": "true"},
        "app": "shop",
        "env": "qa",
        # The environment must be the task's own (the API refuses another).
        "deployment": {"service": XSS_NAME, "environment": "qa", "version": "javascript:alert(1)"},
    }
    _submit_api(world, key, body)
    browser.get(world.cluster.url + "/console/deployments")
    wait(browser, lambda d: XSS_NAME in d.find_element(By.TAG_NAME, "table").text, "the deployment")
    assert_nothing_ran(browser)


def _submit_api(world: World, key: str, body: dict[str, Any]) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(world.cluster.ca_file))
    req = urllib.request.Request(
        world.cluster.url + "/api/v1/tasks",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def step_cancel_a_running_task(world: World, browser: WebDriver) -> None:
    never = world.root / "never"
    task_id = submit_script(
        world, browser, f"echo waiting\nwhile [ ! -f {never} ]; do sleep 0.1; done\n"
    )
    world.task_ids["cancel"] = task_id
    wait(browser, lambda d: "waiting" in text_of(d, "#log"), "the task to run")
    browser.find_element(By.ID, "cancel").click()
    wait(browser, state_is("cancelled"), "the task to be cancelled")
    assert not browser.find_elements(By.ID, "cancel")


def step_drain_and_resume_a_delegate(world: World, browser: WebDriver) -> None:
    browser.get(world.cluster.url + "/console/delegates")
    wait(
        browser,
        lambda d: "d1" in text_of(d, "tr.row-ok"),
        "a healthy delegate",
    )
    shot(browser, "delegates")
    # The rows are live (replaced as the fleet changes): each click finds its button afresh.
    click(browser, "tr.row-ok button.drain", "the drain button")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".badge.draining"), "draining")
    listed = json.loads(world.tether("delegate", "list", "--output", "json").stdout)
    assert [d["draining"] for d in listed["delegates"]] == [True]
    click(browser, "button.resume", "the resume button")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "button.drain"), "resumed")


def step_the_audit_trail_finds_the_events_and_verifies(world: World, browser: WebDriver) -> None:
    task_id = world.task_ids["cancel"]
    browser.get(world.cluster.url + "/console/audit")
    browser.find_element(By.ID, "audit-text").send_keys(task_id)
    browser.find_element(By.ID, "audit-search").click()
    # Running, so the delegate was asked to stop it (the event of the cancel request).
    wanted = f"asked the delegate running task {task_id} to cancel it"
    wait(browser, lambda d: wanted in text_of(d, ".events"), "the cancel event")
    assert "ops@example.com" in text_of(browser, ".events")
    browser.get(world.cluster.url + "/console/audit?type=delegate")
    wait(browser, lambda d: "drain" in text_of(d, ".events"), "the drain event")
    browser.find_element(By.ID, "verify").click()
    verdict = wait(browser, lambda d: text_of(d, "#verdict-text"), "the verdict")
    assert verdict.startswith("✔ The chain holds")
    shot(browser, "audit")
    browser.get(world.cluster.url + "/console/charts")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg")) == 3
    assert browser.find_elements(By.CSS_SELECTOR, "rect.bar.succeeded")
    shot(browser, "charts")
    browser.get(world.cluster.url + "/console/tasks")
    shot(browser, "tasks")
    # A task submitted elsewhere (the API) appears in the open list, without a reload.
    browser.execute_script("window.__same_page = true")
    body = {"payload": {"type": "shell", "script": "true"}, "app": "shop", "env": "qa"}
    elsewhere = _submit_api(world, world.cluster.admin_key, body)["id"]
    wait(browser, lambda d: elsewhere in text_of(d, "#task-rows"), "the task submitted elsewhere")
    assert browser.execute_script("return window.__same_page") is True


def step_a_10000_line_log_loads_its_tail_only(world: World, browser: WebDriver) -> None:
    task_id = submit_script(world, browser, "seq 1 10000\n")
    wait(browser, state_is("succeeded"), "the long task")
    browser.get(f"{world.cluster.url}/console/tasks/{task_id}")
    wait(browser, lambda d: "10000" in text_of(d, "#log"), "the tail")
    timing = browser.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        " return {load: n.loadEventEnd - n.startTime,"
        " dom: n.domContentLoadedEventEnd - n.startTime, bytes: n.transferSize};"
    )
    print(f"\ntask page with a 10,000-line log: {timing}")
    lines = browser.find_elements(By.CSS_SELECTOR, "#log .ln")
    assert len(lines) == 1000
    assert lines[0].text == "9001"
    browser.find_element(By.ID, "load-earlier").click()
    wait(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log .ln")) == 2000,
        "earlier lines",
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#log .ln")[0].text == "8001"


def step_approve_a_runbook_run(world: World, browser: WebDriver) -> None:
    """A run another person started waits on the ops group: its page offers Approve."""
    book = world.root / "gate.yaml"
    book.write_text(
        "name: gate\napp: shop\nenv: qa\ndescription: <script>window.__xss=5</script>\n"
        "steps:\n  - name: ok\n    kind: approval\n    groups: [ops]\n"
    )
    world.tether("runbook", "apply", "-f", str(book))
    run_id = world.tether("runbook", "run", "gate", "--no-follow").stdout.strip()
    browser.get(f"{world.cluster.url}/console/runbooks")
    browser.find_element(By.CSS_SELECTOR, f'a[href="/console/runbooks/runs/{run_id}"]').click()
    wait(browser, lambda d: d.find_elements(By.ID, "approve"), "the run page's Approve button")
    browser.find_element(By.ID, "decision-reason").send_keys("looks good")
    shot(browser, "run")
    browser.find_element(By.ID, "approve").click()
    wait(browser, lambda d: text_of(d, "#run-state") == "succeeded", "the approved run")
    assert "approved by ops@example.com for ops: looks good" in text_of(browser, "#steps")
    assert not browser.find_elements(By.ID, "approve")
    assert_nothing_ran(browser)


def step_csrf_is_refused_without_the_sessions_token(world: World, browser: WebDriver) -> None:
    session = browser.get_cookie(COOKIE)
    assert session is not None
    path = f"/console/tasks/{world.task_ids['live']}/rerun"
    assert world.http("POST", path, cookie=session["value"])[0] == 403
    assert world.http("POST", path, cookie=session["value"], csrf="forged")[0] == 403
    # The same request with the session's token passes the check (and reruns the task).
    token = csrf_token(session["value"])
    assert world.http("POST", path, cookie=session["value"], csrf=token)[0] == 303


def step_a_user_without_rights_sees_neither_pages_nor_buttons(
    world: World, browser: WebDriver
) -> None:
    url = world.cluster.url
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: d.current_url.endswith("/console/login"), "signed out")
    browser.get(f"{url}/console/invite?token={world.invites['viewer@example.com']}")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(browser, lambda d: d.current_url.endswith("/console/tasks"), "signed in as viewer")
    assert_nothing_ran(browser)  # the name in the header
    # Not one of the ops' tasks is listed, and no form to submit one.
    assert not browser.find_elements(By.CSS_SELECTOR, "a.task-link")
    assert not browser.find_elements(By.ID, "submit")
    assert not browser.find_elements(By.ID, "nav-audit")
    assert not browser.find_elements(By.ID, "nav-users")
    browser.get(f"{url}/console/tasks/{world.task_ids['live']}")
    assert "404" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(url + "/console/delegates")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.row-ok"), "the delegate list")
    assert not browser.find_elements(By.CSS_SELECTOR, "button.drain, button.resume")
    for page in ("/console/audit", "/console/admin/users", "/console/admin/api-keys"):
        browser.get(url + page)
        assert "403" in browser.find_element(By.TAG_NAME, "h1").text, page
    session = browser.get_cookie(COOKIE)
    assert session is not None
    drain = "/console/delegates/d1/drain"
    forged = world.http("POST", drain, cookie=session["value"], csrf=csrf_token(session["value"]))
    assert forged[0] == 403
    assert "manage_delegates" in forged[1]


def test_an_operators_session_in_the_browser(world: World, browser: WebDriver) -> None:
    """The steps above, in order, as one operator's session. One test, not one per step:
    each builds on the one before (the signed-in browser, the tasks it ran), and xdist's
    worksteal would hand a module's tests to several workers."""
    for step in (
        step_signed_out_everything_leads_to_the_login,
        step_invite_enrol_2fa_and_log_in_with_totp,
        step_a_task_log_appears_as_it_is_written,
        step_injected_markup_in_scripts_logs_and_names_never_runs,
        step_cancel_a_running_task,
        step_drain_and_resume_a_delegate,
        step_the_audit_trail_finds_the_events_and_verifies,
        step_a_10000_line_log_loads_its_tail_only,
        step_approve_a_runbook_run,
        step_csrf_is_refused_without_the_sessions_token,
        step_a_user_without_rights_sees_neither_pages_nor_buttons,
    ):
        step(world, browser)
