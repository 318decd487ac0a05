"""Signing in to the dashboard (docs/security.md): once the service has a token, a page sends the
browser to /signin, a wrong token is refused there, the right one comes back to the page with an
HttpOnly, SameSite session cookie, and once the sign-in ends (signed out) the open page goes
back to /signin at its next poll.

It borrows the session's shared service: the token exists only during this test and is revoked
at its end, whatever happens, which makes the service open on loopback again for the others.
"""

from __future__ import annotations

import uuid

import pytest

from orchestrator import auth
from orchestrator.db.session import make_engine, make_sessionmaker, transaction


@pytest.fixture
def token(service):
    engine = make_engine(service.db_url)
    factory = make_sessionmaker(engine)
    name = f"ui-{uuid.uuid4().hex[:8]}"  # names are never reused, and the shared database keeps them
    with transaction(factory) as s:
        _token, secret = auth.create_token(s, name, auth.Scope.read)
    try:
        yield secret
    finally:
        with transaction(factory) as s:
            auth.revoke_token(s, name)
        engine.dispose()


def test_a_page_sends_the_browser_to_sign_in_and_back(dash, token):
    secret = token
    # the browser logs each refused request (401) as a console error; here they are the point
    dash.allow(r"status of 401")
    page = dash.page
    page.goto(dash.url("/"))
    page.wait_for_url("**/signin?next=*")
    assert page.locator("#token").get_attribute("type") == "password"

    page.fill("#token", "ty_not-a-token")
    page.click("#signin-submit")
    page.wait_for_selector("#signin-error:not([hidden])")
    assert "not valid" in page.inner_text("#signin-error")
    assert dash.context.cookies() == []

    page.fill("#token", secret)
    page.click("#signin-submit")
    dash.wait_ready()  # back on the runs page, filled from the API with the cookie
    assert page.url == dash.url("/") and dash.page.locator("#runs-table tbody tr[data-run-id]").count() > 0
    (cookie,) = dash.context.cookies()
    assert cookie["name"] == "trainyard_session" and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["expires"] > 0 and secret not in cookie["value"]
    assert page.evaluate("() => document.cookie") == ""  # HttpOnly: no script can read it

    assert page.evaluate("async () => (await fetch('/api/v1/auth/session', {method: 'DELETE'})).status") == 204
    page.wait_for_url("**/signin?next=*", timeout=10_000)  # the next poll got 401
    assert "/signin?next=%2F%3Frefresh_ms%3D" in page.url
