"""Secrets: the /secrets-manager API, secrets and credentials in the payload's environment,
and their values masked in the task's output."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from qcompute.server.crypto import unseal
from qcompute.server.db.models import Secret
from qcompute.server.executors.base import Finished, Output, Phase

from .conftest import database_bytes, wait_for

DATA = "/secrets-manager/data"


def put(cluster, key: str, value, headers=None):
    return cluster.client.put(f"{DATA}/{key}", json={"Value": value},
                              headers=headers or cluster.headers)


def patch(cluster, key: str, body, headers=None):
    return cluster.client.patch(f"{DATA}/{key}", json=body, headers=headers or cluster.headers)


def value_of(cluster, key: str, headers=None):
    response = cluster.client.get(f"{DATA}/{key}", headers=headers or cluster.headers)
    return response.json()["value"] if response.status_code == 200 else response.status_code


def keys(cluster, prefix: str = "", headers=None) -> list[str]:
    response = cluster.client.get(f"/secrets-manager/search/{prefix}",
                                  headers=headers or cluster.headers)
    assert response.status_code == 200, response.text
    return response.json()["keys"]


def add_user(cluster, email: str) -> dict:
    response = cluster.post("/admin/users", json={"email": email})
    assert response.status_code == 201, response.text
    return {"Authorization": response.json()["token"]}


# -- the API ------------------------------------------------------------------------------------

def test_create_read_update_delete(cluster):
    created = put(cluster, "db/password", "hunter22")
    assert created.status_code == 201 and created.json() == {"key": "db/password"}
    assert value_of(cluster, "db/password") == "hunter22"
    assert value_of(cluster, "db/password/") == "hunter22"  # '/' stripped at both ends
    again = put(cluster, "/db/password/", "other")
    assert again.status_code == 409 and again.json()["code"] == "secret_exists"
    assert patch(cluster, "db/password", {"Value": "new one"}).status_code == 200
    assert patch(cluster, "db/password", {"value": "lower v"}).status_code == 200  # accepted
    assert value_of(cluster, "db/password") == "lower v"
    missing = patch(cluster, "db/nothing", {"Value": "x"})
    assert missing.status_code == 404 and missing.json()["code"] == "secret_not_found"
    assert cluster.delete(f"{DATA}/db/password").json() == {"key": "db/password",
                                                             "message": "deleted"}
    assert value_of(cluster, "db/password") == 404
    assert cluster.delete(f"{DATA}/db/password").status_code == 404
    assert put(cluster, "empty", "").status_code == 201 and value_of(cluster, "empty") == ""


@pytest.mark.parametrize("key, body, code", [
    ("bad key", {"Value": "v"}, "invalid_secret_key"),
    ("caf\u00e9", {"Value": "v"}, "invalid_secret_key"),
    ("a/%2E%2E/b", {"Value": "v"}, "invalid_secret_key"),
    ("k" * 1025, {"Value": "v"}, "invalid_secret_key"),
    ("ok", {"Value": 5}, "invalid_secret_value"),
    ("ok", {"Value": None}, "invalid_secret_value"),
    ("ok", {"Value": "x" * (64 * 1024 + 1)}, "invalid_secret_value"),
    ("ok", {"Value": "nul\x00byte"}, "invalid_secret_value"),
    ("ok", {"Secret": "v"}, "missing_value"),
    ("ok", ["v"], "missing_value"),
])
def test_bad_keys_and_values_are_400_and_store_nothing(cluster, key, body, code):
    response = cluster.client.put(f"{DATA}/{key}", json=body, headers=cluster.headers)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code and response.json()["message"]
    assert keys(cluster) == []


def test_not_json_and_no_token(cluster):
    response = cluster.client.put(f"{DATA}/k", content=b"{nope", headers=cluster.headers)
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
    assert cluster.client.get(f"{DATA}/k").status_code == 401


def test_search_lists_one_level_relative_to_the_prefix(cluster):
    for key in ("a", "b/c", "b/d/e", "b/d/f", "bz", "c/x", "b"):
        assert put(cluster, key, "value").status_code == 201
    assert keys(cluster) == ["a", "b", "b/", "bz", "c/"]
    assert cluster.get("/secrets-manager/search").json() == {"keys": keys(cluster)}
    assert keys(cluster, "b") == ["c", "d/"] == keys(cluster, "b/") == keys(cluster, "/b/")
    assert keys(cluster, "b/d") == ["e", "f"]
    assert keys(cluster, "nothing") == [] and keys(cluster, "b/c") == []
    bad = cluster.get("/secrets-manager/search/no%20spaces")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_secret_key"


def test_each_user_sees_only_their_own_secrets(cluster):
    alice = add_user(cluster, "alice@example.com")
    assert put(cluster, "shared/key", "alice's", headers=alice).status_code == 201
    assert value_of(cluster, "shared/key") == 404
    assert keys(cluster) == [] and keys(cluster, headers=alice) == ["shared/"]
    assert patch(cluster, "shared/key", {"Value": "x"}).status_code == 404
    assert cluster.delete(f"{DATA}/shared/key").status_code == 404
    assert put(cluster, "shared/key", "owner's").status_code == 201  # a key of their own
    assert value_of(cluster, "shared/key", headers=alice) == "alice's"
    assert value_of(cluster, "shared/key") == "owner's"


# -- secrets in the payload's environment --------------------------------------------------------

def test_granted_secrets_reach_the_environment_read_at_dispatch(cluster):
    for key, value in (("db/password", "pw-one"), ("db/user", "admin"),
                       ("api.key-2", "k2-value"), ("other", "not granted")):
        assert put(cluster, key, value).status_code == 201
    rights = {"bySecret": [{"key": "/api.key-2"}, {"key": "missing"}],
              "byPrefix": [{"prefix": "db/"}]}
    uuid = cluster.submit("env", instanceCount=3, secretsAccessRights=rights)
    first = cluster.wait_dispatched(uuid, 2)  # the fake executor runs 2 at a time
    env = cluster.executor.specs[first[0]].secret_env
    secrets = {k: v for k, v in env.items() if k.startswith("QARNOT_SECRET__")}
    assert secrets == {"QARNOT_SECRET__DB_PASSWORD": "pw-one", "QARNOT_SECRET__DB_USER": "admin",
                       "QARNOT_SECRET__API_KEY_2": "k2-value"}
    assert cluster.task(uuid)["secretsAccessRights"] == {
        "bySecret": [{"key": "/api.key-2"}, {"key": "missing"}], "byPrefix": [{"prefix": "db/"}]}
    doc = cluster.task(uuid)  # a client's commit() sends it all back: the rights are fixed
    assert cluster.put(f"/tasks/{uuid}", json={**doc, "name": "renamed"}).status_code == 200
    other = {**doc, "secretsAccessRights": {"bySecret": [{"key": "other"}]}}
    assert cluster.put(f"/tasks/{uuid}", json=other).json()["code"] == "field_fixed"
    assert patch(cluster, "db/password", {"Value": "pw-two"}).status_code == 200
    cluster.executor.run(first[0])
    third = wait_for(lambda: [k for k in cluster.executor.keys_of(uuid) if k.instance_id == 2])
    assert cluster.executor.specs[third[0]].secret_env["QARNOT_SECRET__DB_PASSWORD"] == "pw-two"


def test_no_rights_no_secrets_and_bad_rights_are_400(cluster):
    assert put(cluster, "db/password", "pw-one").status_code == 201
    key = cluster.wait_dispatched(cluster.submit("env"), 1)[0]
    assert not [k for k in cluster.executor.specs[key].secret_env if k.startswith("QARNOT_SECRET__")]
    doc = {"name": "t", "profile": "docker-batch", "constants": [{"key": "DOCKER_CMD",
                                                                   "value": "env"}]}
    for rights in ({"bySecret": [{"key": "bad key"}]}, {"byPrefix": [{"prefix": "a b"}]},
                   {"bySecret": [{}]}, {"bySecret": "db/password"}):
        response = cluster.post("/tasks", json={**doc, "secretsAccessRights": rights})
        assert response.status_code == 400 and "secretsAccessRights" in response.json()["message"]


def test_secret_values_are_masked_even_split_across_chunks(cluster):
    assert put(cluster, "db/password", "s3cr3t-value").status_code == 201
    assert put(cluster, "tiny", "abc").status_code == 201  # too short to mask
    uuid = cluster.submit("env", secretsAccessRights={"byPrefix": [{"prefix": ""}]})
    key = cluster.wait_dispatched(uuid, 1)[0]
    send = cluster.executor.on_event
    send(Phase(key, "running"))
    for chunk in ("pw=s3cr", "3t-val", "ue abc\n", "again s3cr3t-valu", "e\nend s3cr"):
        send(Output(key, "stdout", chunk))
    send(Output(key, "stderr", "s3cr3t-value"))
    assert cluster.post(f"/tasks/{uuid}/stdout").text == "pw=*** abc\nagain ***\nend "
    cluster.executor.specs.pop(key)
    send(Finished(key, exit_code=0))  # releases the held-back tail
    cluster.wait_state(uuid, "Success")
    assert cluster.get(f"/tasks/{uuid}/stdout").text == "pw=*** abc\nagain ***\nend s3cr"
    assert cluster.post(f"/tasks/{uuid}/stdout").text == "s3cr"
    assert cluster.get(f"/tasks/{uuid}/stderr/0").text == "***"
    assert len(cluster.client.app.state.ctx.scheduler.masks) == 0  # forgotten at the end


# -- sealed at rest ---------------------------------------------------------------------------

def test_secrets_are_sealed_at_rest_and_scoped_by_owner(cluster):
    alice = add_user(cluster, "alice@example.com")
    put(cluster, "k/one", "owner-value")
    put(cluster, "k/one", "alice-value", headers=alice)
    with cluster.client.app.state.ctx.sessions() as session:
        stored = list(session.scalars(select(Secret.value)))
        assert sorted(unseal(session, v) for v in stored) == ["alice-value", "owner-value"]
    assert not {"alice-value", "owner-value"} & set(stored)
    assert b"-value" not in database_bytes(cluster)
    uuid = cluster.submit("env", secretsAccessRights={"bySecret": [{"key": "k/one"}]})
    key = cluster.wait_dispatched(uuid, 1)[0]
    assert cluster.executor.specs[key].secret_env["QARNOT_SECRET__K_ONE"] == "owner-value"
