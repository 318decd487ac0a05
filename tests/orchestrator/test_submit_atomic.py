"""A submit is atomic and idempotent (issue 13, finding 5; orchestrator/api/submits.py).

On SQLite and PostgreSQL, through the app in process: the same Idempotency-Key with the same spec
gives back the same run (once in the database, also when the requests race), another spec under
it is a 409, keys are per submitter and expire; and a response that cannot be sent, after the
run's insert, leaves no run behind and `GET /runs` whole. Through a real `trainyard serve` and the
real CLI: a submit whose answer is lost is sent again under the same key and makes one run.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from orchestrator import auth
from orchestrator.api import submits
from orchestrator.api.app import create_app
from orchestrator.db.models import IdempotencyKey, Run, utcnow
from orchestrator.db.session import transaction
from orchestrator_helpers import api_service, cli_env, trainyard

SPEC = {"name": "idem", "training": {"max_tokens": 100_000}, "budget": {"max_usd": 5}}


def count(factory, model) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(model))


def post(client, spec: dict, key: str | None, **headers: str):
    return client.post("/api/v1/runs", json=spec, headers={**({"Idempotency-Key": key} if key else {}), **headers})


def test_the_same_key_and_spec_give_the_same_run_once(client, factory):
    first = post(client, SPEC, "key-1")
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    # the same spec, its keys in another order: the same request as the service reads it
    again = post(client, dict(reversed(SPEC.items())), "key-1")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert client.get("/api/v1/runs").json()["total"] == 1 and count(factory, Run) == 1
    # without a key, or with another, a submit is a new run
    assert post(client, SPEC, None).json()["id"] != first.json()["id"]
    assert post(client, SPEC, "key-2").json()["id"] != first.json()["id"]
    assert count(factory, Run) == 3


def test_the_same_key_with_another_spec_is_409_and_makes_nothing(client, factory):
    made = post(client, SPEC, "key-1").json()
    r = post(client, {**SPEC, "name": "other"}, "key-1")
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert detail["message"] == (
        f"this Idempotency-Key was used for another spec (it made run {made['id']}); send a new key with a new submit"
    )
    assert count(factory, Run) == 1


def test_racing_requests_with_one_key_make_one_run(client, factory):
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _i: post(client, SPEC, "racing"), range(4)))
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert count(factory, Run) == 1 and count(factory, IdempotencyKey) == 1


def test_keys_are_per_submitter_and_expire(settings, factory):
    with transaction(factory) as s:
        _a, secret_a = auth.create_token(s, "alice", auth.Scope.submit)
        _b, secret_b = auth.create_token(s, "bob", auth.Scope.submit)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        alice = post(c, SPEC, "shared", Authorization=f"Bearer {secret_a}").json()
        bob = post(c, SPEC, "shared", Authorization=f"Bearer {secret_b}").json()
        assert alice["id"] != bob["id"] and (alice["submitted_by"], bob["submitted_by"]) == ("alice", "bob")
        with transaction(factory) as s:  # a day and a bit later
            s.execute(
                update(IdempotencyKey).values(
                    created_at=utcnow() - timedelta(seconds=settings.idempotency_key_ttl_s + 60)
                )
            )
        later = post(c, SPEC, "shared", Authorization=f"Bearer {secret_a}")
    assert later.status_code == 201 and later.json()["id"] not in (alice["id"], bob["id"])
    assert count(factory, Run) == 3 and count(factory, IdempotencyKey) == 1  # the expired ones are gone


def test_a_response_that_cannot_be_sent_leaves_no_run(settings, factory, monkeypatch):
    """The fault the issue found: the run was committed, then its response failed to render
    (a value JSON cannot carry), so the submit answered 500 and the run answered 500 forever."""
    real = submits.run_detail

    def unsendable(session, run):
        detail = real(session, run)
        detail.cost.cents = math.inf  # what JSON cannot hold: rendering the response fails
        return detail

    monkeypatch.setattr(submits, "run_detail", unsendable)
    with TestClient(create_app(settings), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        r = post(c, SPEC, "key-1")
        assert r.status_code == 500
        assert r.json()["detail"]["message"] == "internal error; see the service log"
        listed = c.get("/api/v1/runs")
        assert listed.status_code == 200 and listed.json()["total"] == 0
        assert count(factory, Run) == 0 and count(factory, IdempotencyKey) == 0
        monkeypatch.setattr(submits, "run_detail", real)
        # nothing was kept under the key: sent again, it makes the run now
        again = post(c, SPEC, "key-1")
        assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
        assert c.get(f"/api/v1/runs/{again.json()['id']}").status_code == 200


class DropFirstSubmitAnswer:
    """A TCP proxy on loopback in front of the service that passes everything both ways, except
    the answer to the first `POST /api/v1/runs`: the connection is closed as that answer comes,
    so the service has made the run but the client never hears of it. It records each submit's
    Idempotency-Key."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.keys: list[str] = []
        self._dropped = False
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
            drop = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, drop), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, drop), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, drop: threading.Event) -> None:
        while data := _recv(client):
            if data.startswith(b"POST /api/v1/runs "):
                head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower().splitlines()
                self.keys += [line.split(":", 1)[1].strip() for line in head if line.startswith("idempotency-key:")]
                with self._lock:
                    if not self._dropped:
                        self._dropped = True
                        drop.set()
            upstream.sendall(data)

    def _answers(self, upstream: socket.socket, client: socket.socket, drop: threading.Event) -> None:
        while data := _recv(upstream):
            if drop.is_set():  # the service answered the submit: the client never hears it
                break
            client.sendall(data)
        for sock in (client, upstream):  # shutdown, not just close: it wakes the other pump's recv
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def test_the_cli_sends_a_lost_submit_again_under_its_key_and_makes_one_run(tmp_path):
    svc = api_service(tmp_path / "data")
    proxy = DropFirstSubmitAnswer(svc.port)
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text("name: lost-answer\ntraining: {max_tokens: 100000}\n")
        done = trainyard("submit", str(spec), "--force", env=cli_env(api_url=proxy.url))
        assert done.returncode == 0, done.stderr
        listed = svc.client.get("/runs").json()
        assert listed["total"] == 1 and listed["runs"][0]["id"] == done.stdout.strip()
        assert len(proxy.keys) == 2 and proxy.keys[0] == proxy.keys[1]  # sent twice, one key
    finally:
        proxy.close()
        svc.close()
