"""Specs are checked at the door (orchestrator/door.py, api/limits.py): every refused value is
named at once, before any row or node exists, through the real API and through the CLI.

What a user notices: a spec with NaN, infinity, a lone surrogate, a foreign scheme, an unknown
model override, a local path outside the data roots or a size over the service's limits is a 422
(the CLI's exit 2) listing each field, and no run is made; a body over 1 MiB is a 413; a cursor
past 64 bits is a 422; YAML with a key given twice or nested past reason is exit 2 with no
traceback.
"""

from __future__ import annotations

import json

import httpx
import pytest

from orchestrator.api.app import create_app
from orchestrator.api.limits import MAX_BODY_BYTES, MAX_INT
from orchestrator.settings import Settings
from orchestrator_helpers import cli_env, local_client, serving, trainyard

#: one JSON body holding one of every refusal, written by hand: Python's json would not write
#: NaN as a JSON literal the way an attacker's client does
EVERY_MISTAKE = (
    "{"
    '"name": "door\\ud800",'
    '"artifact_uri": "ftp://example.com/x",'
    '"model": {"overrides": {"n_layers": 2}},'
    '"data": {"source": "/proc/self/environ"},'
    '"training": {"lr": 1e999, "seed": 1099511627776, "max_tokens": 2000000000000},'
    '"compute": {"provider": "lambda", "instance_type": "gpu_1x_a10", "nodes": 9},'
    '"evaluation": {"ift": {"enabled": true, "data": "gopher://x", "lr": NaN}},'
    '"budget": {"max_usd": Infinity}'
    "}"
)
EVERY_FIELD = {
    "name",  # lone surrogate
    "artifact_uri",  # scheme
    "model.overrides.n_layers",  # not a GPTConfig field (the trainer would refuse it after data prep)
    "data.source",  # outside the data roots
    "training.lr",  # 1e999 is infinity
    "training.seed",  # past 32 bits
    "training.max_tokens",  # over TRAINYARD_MAX_TOKENS
    "compute.nodes",  # over TRAINYARD_MAX_NODES
    "evaluation.ift.data",  # neither http(s) nor a path
    "evaluation.ift.lr",  # NaN
    "budget.max_usd",  # infinity
}


@pytest.fixture
def client(sqlite_url, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, max_nodes=8)
    with local_client(create_app(settings)) as c:
        yield c


def fields(response) -> set[str | None]:
    return {e["field"] for e in response.json()["detail"]["errors"]}


def post_json(client, text: str | bytes, **headers):
    return client.post("/api/v1/runs", content=text, headers={"content-type": "application/json", **headers})


def test_every_refusal_is_named_at_once_and_no_run_is_made(client):
    r = post_json(client, EVERY_MISTAKE)
    assert r.status_code == 422, r.text
    assert fields(r) == EVERY_FIELD
    messages = {e["field"]: e["message"] for e in r.json()["detail"]["errors"]}
    assert "TRAINYARD_MAX_NODES" in messages["compute.nodes"] and "8" in messages["compute.nodes"]
    assert "outside the folders" in messages["data.source"]
    # the answer echoes nothing that strict JSON or UTF-8 cannot hold
    assert "\ud800" not in r.text and json.loads(r.text, parse_constant=pytest.fail)
    assert client.get("/api/v1/runs").json()["total"] == 0


def test_paths_are_confined_after_symlinks_and_dots_are_resolved(client, tmp_path):
    data = tmp_path / "data"
    (data / "corpora").mkdir(parents=True)
    (data / "corpora" / "env").symlink_to("/proc/self/environ")
    (data / "corpora" / "books.txt").write_text("a book\n")
    refused = {
        "data.source": str(data / "corpora" / "env"),  # a symlink out of the root
        "evaluation.ift.data": f"{data}/corpora/../../../etc/passwd",
        "artifact_uri": (tmp_path / "elsewhere").as_uri(),
    }
    spec = {
        "name": "escape",
        "data": {"source": refused["data.source"]},
        "evaluation": {"ift": {"enabled": True, "data": refused["evaluation.ift.data"]}},
        "artifact_uri": refused["artifact_uri"],
    }
    r = client.post("/api/v1/runs", json=spec)
    assert r.status_code == 422 and fields(r) == set(refused), r.text
    # the run directories hold each run's credentials file: never readable, even inside the root
    r = client.post("/api/v1/runs", json={"name": "peek", "data": {"source": str(data / "runs")}})
    assert r.status_code == 422 and fields(r) == {"data.source"}
    ok = {
        "name": "fine",
        "data": {"source": str(data / "corpora" / "books.txt")},
        "artifact_uri": (data / "store").as_uri(),
        "evaluation": {"ift": {"enabled": True, "data": "https://example.com/alpaca.json"}},
    }
    assert client.post("/api/v1/runs", json=ok).status_code == 201


def test_a_body_over_one_mebibyte_is_413_with_or_without_its_length(client):
    big = b'{"name": "x", "pad": "' + b"a" * MAX_BODY_BYTES + b'"}'
    r = post_json(client, big)
    assert r.status_code == 413 and "1,048,576 bytes" in r.json()["detail"]["message"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = post_json(client, chunks())
    assert r.status_code == 413, r.text
    # under the limit the spec itself is judged (pad is not a field)
    r = post_json(client, b'{"name": "x", "pad": "' + b"a" * (MAX_BODY_BYTES - 100) + b'"}')
    assert r.status_code == 422 and fields(r) == {"pad"}


def test_integer_parameters_past_64_bits_are_422_naming_them(client):
    run_id = client.post("/api/v1/runs", json={"name": "cursor"}).json()["id"]
    too_big = str(MAX_INT + 1)
    for path, param in [
        ("/api/v1/runs", "offset"),
        (f"/api/v1/runs/{run_id}/metrics", "after_id"),
        (f"/api/v1/runs/{run_id}/events", "after_id"),
        (f"/api/v1/runs/{run_id}/events", "before_id"),
        (f"/api/v1/runs/{run_id}/logs", "after_id"),
        (f"/api/v1/runs/{run_id}/series", "after_id"),
        ("/api/v1/comparisons", "offset"),
    ]:
        r = client.get(path, params={param: too_big})
        assert r.status_code == 422 and fields(r) == {param}, (path, r.text)
        assert client.get(path, params={param: str(MAX_INT)}).status_code == 200, path
    r = client.get(f"/api/v1/runs/{run_id}/checkpoints/{too_big}")
    assert r.status_code == 422 and fields(r) == {"step"}


def test_yaml_keys_given_twice_are_mistakes_on_the_server_too(client):
    text = "name: twice\ntraining:\n  lr: 1.0e-3\n  lr: 3.0e-3\n"
    r = client.post("/api/v1/plans", json={"spec": text})
    assert r.status_code == 422 and "training.lr: the key 'lr' is given twice (lines 3 and 4)" in r.text


def test_the_cli_names_every_mistake_and_never_shows_a_traceback(sqlite_url, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url)
    with serving(create_app(settings)) as url:
        env = cli_env(tmp_path / "data", url)
        many = tmp_path / "many.yaml"
        many.write_text(
            "name: door\ntraining: {lr: 1e999, seq_len: 512}\nname: again\nartifact_uri: ftp://x/y\n"
            "model: {overrides: {bogus: 1}}\nevaluation: {ift: {data: 'gopher://x', lr: .nan}}\n"
        )
        done = trainyard("submit", str(many), env=env)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert lines[0] == "error: 7 mistakes in the spec:", done.stderr
        named = {line.strip().split(": ", 1)[0] for line in lines[1:]}
        assert named == {
            "name",  # given twice
            "training.lr",  # infinity
            "training.seq_len",  # past gpt2-tiny's context of 256
            "artifact_uri",
            "model.overrides.bogus",
            "evaluation.ift.data",
            "evaluation.ift.lr",  # NaN
        }, done.stderr

        # fine here, refused by the service: only it knows its data roots
        spec = tmp_path / "outside.yaml"
        spec.write_text(json.dumps({"name": "outside", "data": {"source": str(tmp_path / "books.txt")}}))
        done = trainyard("submit", str(spec), env=env)
        assert done.returncode == 2 and "data.source: " in done.stderr and "Traceback" not in done.stderr, done.stderr

        deep = tmp_path / "deep.yaml"
        deep.write_text("name: deep\nmodel: {overrides: " + "[" * 5000 + "]" * 5000 + "}\n")
        done = trainyard("submit", str(deep), env=env)
        assert (done.returncode, done.stderr) == (2, "error: the spec nests too deeply to be read\n")
        assert httpx.get(f"{url}/api/v1/runs", timeout=10).json()["total"] == 0
