"""Single sign-on in the console: the API's own OIDC flow (start, the provider, the
approval page, poll), ending with the session in the console's cookie."""

from __future__ import annotations

import html
import re

from manager.api.console_cookie import COOKIE
from tests.manager.access.test_sso import browser, idp, m, store  # noqa: F401
from tests.manager.access_support import Manager
from tests.manager.oidc_provider import Person, Provider

SAME = {"Sec-Fetch-Site": "same-origin"}


async def test_an_sso_sign_in_ends_with_the_console_cookie(m: Manager, idp: Provider) -> None:  # noqa: F811
    idp.person = Person("pat@example.com", groups=["sec-auditors"])
    resp = await m.client.post("/console/sso", headers=SAME)
    page = await resp.text()
    assert resp.status == 200, page
    pending = resp.cookies["__Host-tether_sso"]
    assert pending["httponly"]
    assert pending["secure"]
    assert pending["samesite"] == "Strict"
    found = re.search(r'href="([^"]+)"[^>]*id="sso-go"', page)
    assert found is not None
    authorize_url = html.unescape(found.group(1))
    assert authorize_url.startswith(f"{idp.issuer}/authorize?")
    poll = {**SAME, "Cookie": f"__Host-tether_sso={pending.value}", "HX-Request": "true"}

    resp = await m.client.post("/console/sso/poll", headers=poll)
    assert resp.status == 202  # the person has not approved yet

    status, approved = await browser(m, idp, authorize_url)
    assert status == 200, approved
    assert "the web console" in approved

    resp = await m.client.post("/console/sso/poll", headers=poll)
    assert resp.status == 200
    assert resp.headers["HX-Redirect"] == "/console/tasks"
    token = resp.cookies[COOKIE].value
    assert token.startswith("tss_")
    page_resp = await m.client.get("/console/audit", headers={"Cookie": f"{COOKIE}={token}"})
    assert page_resp.status == 200  # the provider's group maps to auditors: view_audit
    assert "pat@example.com" in await page_resp.text()

    # The pending sign-in was collected once: polling again starts nothing.
    resp = await m.client.post("/console/sso/poll", headers=poll)
    assert resp.status == 400


async def test_a_poll_without_a_sign_in_in_progress_is_refused(m: Manager) -> None:  # noqa: F811
    resp = await m.client.post("/console/sso/poll", headers=SAME)
    assert resp.status == 400
    assert "no SSO sign-in is in progress" in await resp.text()
