"""Who may call the API (docs/security.md): tokens and scopes on every route, revocation, tokens
and sessions stored hashed, the submitter of each run, the dashboard's session cookie, trusted
hosts, and what `trainyard serve` refuses before it starts.

The route table is read from the app itself, so a route added later is checked here without
anyone listing it; what it must need is this file's own rule (GET/HEAD read, other methods
submit, /tokens admin), with the open exceptions spelled out below.
"""

from __future__ import annotations

import re
import socket
import subprocess

import pytest
from sqlalchemy import MetaData, select

from orchestrator import auth
from orchestrator.api.app import create_app
from orchestrator.db.models import Run
from orchestrator.db.session import transaction
from orchestrator.settings import Settings
from orchestrator_helpers import Service, cli_env, local_client, one_error_line, trainyard

SPEC = {"name": "auth-test", "training": {"max_tokens": 100_000}, "budget": {"max_usd": 5}}
#: (method, route path) anyone may call: the health check, signing in and out, the sign-in page and
#: the files it loads
OPEN = {
    ("GET", "/api/v1/health"),
    ("POST", "/api/v1/auth/session"),
    ("DELETE", "/api/v1/auth/session"),
    ("GET", "/signin"),
    ("GET", "/favicon.ico"),
    ("GET", "/ui/{name}"),
    ("GET", "/ui/vendor/plotly-basic.min.js"),
}
SCOPES = (auth.Scope.read, auth.Scope.submit, auth.Scope.admin)


def needs(method: str, path: str) -> auth.Scope | None:
    if (method, path) in OPEN:
        return None
    if path.startswith("/api/v1/tokens"):
        return auth.Scope.admin
    return auth.Scope.read if method in ("GET", "HEAD") else auth.Scope.submit


def every_route(app) -> list[tuple[str, str, str]]:
    """(method, route path, a concrete URL) for every route of the app, each path parameter
    filled with a value that matches nothing."""
    try:  # FastAPI >= 0.16x includes routers lazily: app.routes holds the routers, not their routes
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = list(app.routes)
    out = []
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if not path or not methods:
            continue
        url = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "1" if m.group(1) == "step" else "nothing", path)
        out += [(method, path, url) for method in sorted(methods) if method != "HEAD"]
    return out


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def make_token(factory, name: str, scope: auth.Scope) -> str:
    with transaction(factory) as s:
        return auth.create_token(s, name, scope)[1]


@pytest.fixture
def tokens(factory) -> dict[auth.Scope, str]:
    return {scope: make_token(factory, f"{scope.value}-token", scope) for scope in SCOPES}


#: for what does not depend on the database: SQLite only
sqlite_only = pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)


@sqlite_only
def test_every_route_needs_its_scope_401_without_a_token_403_below_it(client, tokens):
    routes = every_route(client.app)
    assert len(routes) > 30 and ("POST", "/api/v1/runs", "/api/v1/runs") in routes
    wrong = []
    for method, path, url in routes:
        needed = needs(method, path)
        anonymous = client.request(method, url, follow_redirects=False)
        if needed is None:
            if anonymous.status_code in (401, 403):
                wrong.append(f"{method} {path}: open, but {anonymous.status_code} without a token")
            continue
        page = method == "GET" and not path.startswith("/api/") and path != "/openapi.json"
        if page:  # the dashboard's pages send the browser to sign in, and back
            if anonymous.status_code != 303 or not anonymous.headers["location"].startswith("/signin?next="):
                wrong.append(f"{method} {path}: {anonymous.status_code} without a token, not a redirect to /signin")
        elif anonymous.status_code != 401 or anonymous.headers.get("www-authenticate") != 'Bearer realm="trainyard"':
            wrong.append(f"{method} {path}: {anonymous.status_code} without a token, not 401")
        for scope in SCOPES:
            got = client.request(method, url, headers=bearer(tokens[scope]), follow_redirects=False).status_code
            allowed = SCOPES.index(scope) >= SCOPES.index(needed)  # read < submit < admin
            if allowed and got in (401, 403) or not allowed and got != 403:
                wrong.append(f"{method} {path} needs {needed.value}: {got} with a {scope.value} token")
    assert not wrong, "\n".join(wrong)


@sqlite_only
def test_a_refusal_says_why_in_the_api_error_body(client, tokens):
    r = client.post("/api/v1/runs", json=SPEC, headers=bearer(tokens[auth.Scope.read]))
    assert r.status_code == 403
    assert r.json()["detail"]["message"] == "token 'read-token' has scope read; this needs submit"
    for header in ("Basic dXNlcjpwdw==", "Bearer", "Bearer ty_not-a-token"):
        r = client.get("/api/v1/runs", headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["detail"]["message"], header
    assert client.get("/api/v1/runs").json()["detail"]["message"].startswith("this service needs a token")


def test_runs_record_who_submitted_them(client, factory, tokens):
    open_run = client.post("/api/v1/runs", json=SPEC)  # tokens exist: no longer open
    assert open_run.status_code == 401
    r = client.post("/api/v1/runs", json=SPEC, headers=bearer(tokens[auth.Scope.submit]))
    assert r.status_code == 201 and r.json()["submitted_by"] == "submit-token"
    run_id = r.json()["id"]
    shown = client.get(f"/api/v1/runs/{run_id}", headers=bearer(tokens[auth.Scope.read])).json()
    assert shown["submitted_by"] == "submit-token"
    listed = client.get("/api/v1/runs", headers=bearer(tokens[auth.Scope.read])).json()["runs"]
    assert [x["submitted_by"] for x in listed] == ["submit-token"]
    with factory() as s:
        assert s.scalar(select(Run.submitted_by).where(Run.id == run_id)) == "submit-token"


def test_with_no_tokens_the_loopback_service_is_open_as_local(client):
    r = client.post("/api/v1/runs", json=SPEC)
    assert r.status_code == 201 and r.json()["submitted_by"] == "local"
    me = client.get("/api/v1/auth/session").json()
    assert me == {"name": "local", "scope": "admin", "via": "open"}


@sqlite_only
def test_a_service_listening_beyond_loopback_is_never_open(settings):
    # every token revoked (or none yet) on a service bound to all addresses: nobody gets in
    with local_client(create_app(settings.model_copy(update={"host": "0.0.0.0"}))) as c:
        assert c.get("/api/v1/runs").status_code == 401
        assert c.post("/api/v1/tokens", json={"name": "me", "scope": "admin"}).status_code == 401
        assert c.get("/api/v1/health").status_code == 200


def test_a_revoked_token_gets_401_and_its_sign_ins_end(client, tokens):
    admin, reader = bearer(tokens[auth.Scope.admin]), tokens[auth.Scope.read]
    assert client.post("/api/v1/auth/session", json={"token": reader}).status_code == 204
    assert client.get("/api/v1/runs").status_code == 200  # by the cookie
    revoked = client.delete("/api/v1/tokens/read-token", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/api/v1/runs", headers=bearer(reader)).status_code == 401
    r = client.get("/api/v1/runs")
    assert r.status_code == 401 and "sign in again" in r.json()["detail"]["message"]
    assert client.post("/api/v1/auth/session", json={"token": reader}).status_code == 401
    # the name stays taken: what runs recorded keeps naming one token
    again = client.post("/api/v1/tokens", json={"name": "read-token", "scope": "read"}, headers=admin)
    assert again.status_code == 409


def test_tokens_and_sessions_are_stored_only_hashed(client, factory):
    created = client.post("/api/v1/tokens", json={"name": "ci", "scope": "submit"})  # open: no token yet
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("ty_") and len(secret) >= 40
    signed_in = client.post("/api/v1/auth/session", json={"token": secret})
    session_id = signed_in.cookies["trainyard_session"]
    assert client.post("/api/v1/runs", json=SPEC, headers=bearer(secret)).status_code == 201
    listed = client.get("/api/v1/tokens", headers=bearer(secret))
    assert listed.status_code == 403  # submit may not see tokens; and no listing shows a secret:
    admin = make_token(factory, "root", auth.Scope.admin)
    assert secret not in client.get("/api/v1/tokens", headers=bearer(admin)).text

    engine = factory.kw["bind"]
    meta = MetaData()
    meta.reflect(engine)
    dump = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            dump += [repr(tuple(row)) for row in conn.execute(table.select())]
    text = "\n".join(dump)
    assert auth.secret_hash(secret) in text  # the dump does hold the tokens table
    assert secret not in text and secret[3:] not in text and session_id not in text


def test_the_session_cookie_is_http_only_same_site_and_secure_over_https(settings, factory):
    secret = make_token(factory, "dash", auth.Scope.submit)
    with local_client(create_app(settings)) as c:
        r = c.post("/api/v1/auth/session", json={"token": secret})
        cookie = r.headers["set-cookie"]
        assert r.status_code == 204 and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Max-Age=43200" in cookie and "Secure" not in cookie
        # a change made with the cookie must come from the dashboard's own origin
        assert c.post("/api/v1/runs", json=SPEC).status_code == 403
        assert c.post("/api/v1/runs", json=SPEC, headers={"Origin": "http://evil.example"}).status_code == 403
        made = c.post("/api/v1/runs", json=SPEC, headers={"Origin": "http://127.0.0.1"})
        assert made.status_code == 201 and made.json()["submitted_by"] == "dash"
        assert c.get("/api/v1/auth/session").json() == {"name": "dash", "scope": "submit", "via": "session"}
        assert c.delete("/api/v1/auth/session").status_code == 204
        assert c.get("/api/v1/runs").status_code == 401
    with local_client(create_app(settings)) as c:
        c.base_url = c.base_url.copy_with(scheme="https")
        assert "Secure" in c.post("/api/v1/auth/session", json={"token": secret}).headers["set-cookie"]


@sqlite_only
def test_only_trusted_host_names_are_answered(settings):
    trusting = settings.model_copy(update={"trusted_hosts": ["trainyard.example.com"]})
    answered = {
        "evil.example": 400,  # DNS rebinding: the attacker's name, resolving to 127.0.0.1
        "evil.example:8000": 400,
        "": 400,
        "localhost:8000": 200,
        "127.0.0.1": 200,
        "[::1]:8000": 200,
        "trainyard.example.com": 200,  # in settings.trusted_hosts
    }
    with local_client(create_app(trusting)) as c:
        got = {host: c.get("/api/v1/health", headers={"Host": host}) for host in answered}
    assert {host: r.status_code for host, r in got.items()} == answered
    assert "TRAINYARD_TRUSTED_HOSTS" in got["evil.example"].json()["detail"]["message"]


# -- the CLI and `trainyard serve` -----------------------------------------------------------------
@pytest.fixture
def service(sqlite_url, tmp_path):
    svc = Service(tmp_path / "data", sqlite_url, command=("serve", "--no-controller")).start()
    yield svc
    svc.close()


def test_the_cli_sends_its_token_and_status_shows_the_submitter(service, tmp_path):
    made = trainyard("token", "create", "--name", "alice", "--scope", "submit", env=service.env)
    assert made.returncode == 0 and "shown only now" in made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("ty_") and "\n" not in secret

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: cli-auth\ntraining: {max_tokens: 50000}\n")
    refused = trainyard("submit", str(spec), env=service.env)
    assert refused.returncode == 8
    assert "needs a token" in one_error_line(refused) and "TRAINYARD_TOKEN" in refused.stderr

    token_file = tmp_path / "data" / "config" / "trainyard" / "token"  # cli_env's XDG_CONFIG_HOME
    token_file.parent.mkdir(parents=True)
    token_file.write_text(secret + "\n")
    token_file.chmod(0o644)
    loose = trainyard("runs", env=service.env)
    assert loose.returncode == 2 and "chmod 600" in one_error_line(loose)
    token_file.chmod(0o600)
    run_id = trainyard("submit", str(spec), env=service.env).stdout.strip()
    status = trainyard("status", run_id, env=service.env)
    assert status.returncode == 0 and re.search(r"submitted by\s+alice", status.stdout)

    assert trainyard("token", "revoke", "alice", env=service.env).returncode == 0
    revoked = trainyard("status", run_id, env=service.env)
    assert revoked.returncode == 8 and "not valid" in one_error_line(revoked)


def serve(db_url: str, tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`trainyard serve` on a migrated database (so it logs nothing before its verdict)."""
    env = {**cli_env(tmp_path), "TRAINYARD_DATABASE_URL": db_url, **env}
    return trainyard("serve", "--no-controller", *args, env=env, timeout=60)


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(sqlite_url, tmp_path):
    proc = serve(sqlite_url, tmp_path, "--host", "0.0.0.0")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "refusing to listen on 0.0.0.0" in line and "trainyard token create" in line


def test_serve_on_a_port_in_use_is_exit_1_with_one_line(sqlite_url, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve(sqlite_url, tmp_path, "--port", str(port))
    assert proc.returncode == 1 and "serving on" not in proc.stdout + proc.stderr
    assert one_error_line(proc) == (
        f"error: port {port} on 127.0.0.1 is in use (another `trainyard serve`?); stop it or choose another "
        f"with --port / TRAINYARD_PORT"
    )


@pytest.mark.parametrize("args, env", [(("--port", "70000"), {}), ((), {"TRAINYARD_PORT": "http"})])
def test_serve_on_an_invalid_port_is_exit_2_without_a_traceback(sqlite_url, tmp_path, args, env):
    proc = serve(sqlite_url, tmp_path, *args, **env)
    assert proc.returncode == 2
    assert re.match(r"error: invalid (port 70000: use 1-65535|setting TRAINYARD_PORT: )", one_error_line(proc))


@sqlite_only
def test_serve_starts_beyond_loopback_once_a_token_exists(db_url, factory):
    from orchestrator.cli.errors import CliError
    from orchestrator.cli.server import _check_exposure

    public = Settings(database_url=db_url, host="0.0.0.0")
    engine = factory.kw["bind"]
    with pytest.raises(CliError, match="refusing to listen on 0.0.0.0"):
        _check_exposure(public, engine)
    make_token(factory, "ops", auth.Scope.admin)
    _check_exposure(public, engine)  # no refusal: it would bind now
