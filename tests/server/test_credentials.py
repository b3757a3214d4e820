"""Credentials of a payload: runners get their owner's S3 identity, never the admin keys;
``exportApiAndStorageCredentialsInEnvironment`` exports the owner's current token, opened from
the users table; an account whose token the server does not know fails as infrastructure."""
from __future__ import annotations

import configparser

from sqlalchemy import select, update

from qcompute.server.bootstrap import client_config_path
from qcompute.server.crypto import unseal
from qcompute.server.db.models import Instance, Pool, Task, User
from qcompute.server.executors.base import S3Access

from .conftest import database_bytes, serving, wait_for

EXPORT = {"privileges": {"exportApiAndStorageCredentialsInEnvironment": True}}
S3_URL = "http://127.0.0.1:9"  # the stub storage's endpoint
OWNER = "owner@qcompute.local"


def add_user(cluster, email: str) -> str:
    response = cluster.post("/admin/users", json={"email": email})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def submit_as(cluster, token: str, command: str = "env", **fields) -> str:
    doc = {"name": "t", "profile": "docker-batch",
           "constants": [{"key": "DOCKER_CMD", "value": command}], **fields}
    response = cluster.client.post("/tasks", json=doc, headers={"Authorization": token})
    assert response.status_code == 201, response.text
    return response.json()["uuid"]


def db(cluster):
    return cluster.client.app.state.ctx.sessions()


def row(cluster, model, uuid: str):
    with db(cluster) as session:  # a new session each time: it sees the latest commit
        return session.scalar(select(model).where(model.uuid == uuid))


def sealed_token(cluster, email: str):
    with db(cluster) as session:
        return session.scalar(select(User.sealed_token).where(User.email == email))


def forget_token(cluster, email: str) -> None:
    """As for an account made before tokens were sealed."""
    with db(cluster) as session:
        session.execute(update(User).where(User.email == email).values(sealed_token=None))
        session.commit()


def test_exported_credentials_are_the_owners_masked_and_nowhere_in_clear(cluster):
    token = cluster.headers["Authorization"]
    uuid = cluster.submit("env", **EXPORT)
    key = cluster.wait_dispatched(uuid, 1)[0]
    spec = cluster.executor.specs[key]
    settings = cluster.client.app.state.ctx.settings
    env = spec.secret_env
    assert {k: v for k, v in env.items() if k.startswith(("QARNOT_", "QCOMPUTE_", "AWS_"))} \
        == {"QARNOT_CLUSTER_URL": settings.api_url, "QCOMPUTE_CLUSTER_URL": settings.api_url,
            "QARNOT_CLIENT_TOKEN": token, "QCOMPUTE_CLIENT_TOKEN": token,
            "QARNOT_STORAGE_URL": S3_URL, "QCOMPUTE_STORAGE_URL": S3_URL,
            "AWS_ENDPOINT_URL": S3_URL, "AWS_ACCESS_KEY_ID": OWNER,
            "AWS_SECRET_ACCESS_KEY": token, "AWS_DEFAULT_REGION": settings.s3_region}
    assert spec.s3 == S3Access(S3_URL, OWNER, token)
    cluster.executor.run(key, stdout=f"token is {token}\n")
    cluster.wait_state(uuid, "Success")
    assert cluster.get(f"/tasks/{uuid}/stdout").text == "token is ***\n"
    assert token.encode() not in database_bytes(cluster)


def test_each_runner_gets_its_owners_identity_and_credentials_only_when_granted(cluster):
    alice = add_user(cluster, "alice@example.com")
    plain = cluster.wait_dispatched(submit_as(cluster, alice), 1)[0]
    spec = cluster.executor.specs[plain]
    assert spec.s3 == S3Access(S3_URL, "alice@example.com", alice)  # neither admin nor owner
    assert not {"QARNOT_CLIENT_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} \
        & spec.secret_env.keys()
    exported = cluster.wait_dispatched(submit_as(cluster, alice, **EXPORT), 1)[0]
    env = cluster.executor.specs[exported].secret_env
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("alice@example.com", alice)
    assert env["QARNOT_CLIENT_TOKEN"] == alice
    assert cluster.headers["Authorization"] not in env.values()


def test_a_rotated_token_reaches_the_instances_started_after(cluster):
    alice = add_user(cluster, "alice@example.com")
    uuid = submit_as(cluster, alice, instanceCount=3, **EXPORT)
    first = cluster.wait_dispatched(uuid, 2)  # the fake executor runs 2 at a time
    rotated = cluster.post("/admin/users/alice@example.com/token").json()["token"]
    cluster.executor.run(first[0])
    third = wait_for(lambda: [k for k in cluster.executor.keys_of(uuid) if k.instance_id == 2])
    spec = cluster.executor.specs[third[0]]
    assert spec.secret_env["QARNOT_CLIENT_TOKEN"] == rotated != alice
    assert spec.s3 == S3Access(S3_URL, "alice@example.com", rotated)


def _fill(cluster, slots: int) -> list:
    """Keep the executor's slots busy with the owner's instances."""
    return cluster.wait_dispatched(cluster.submit("sleep 9", instanceCount=slots), slots)


def test_an_unknown_token_fails_the_instance_and_is_kept_at_the_next_request(cluster):
    alice = add_user(cluster, "alice@example.com")
    busy = _fill(cluster, 2)
    uuid = submit_as(cluster, alice)  # queued behind the owner's instances
    forget_token(cluster, "alice@example.com")
    for key in busy:
        cluster.executor.run(key)
    task = wait_for(lambda: (t := row(cluster, Task, uuid)).state == "Failure" and t)
    with db(cluster) as session:
        instance = session.scalar(select(Instance).where(Instance.task_id == task.id))
    assert "rotate the token (qcompute user rotate alice@example.com)" in instance.error
    assert instance.attempt == 3 and instance.infra_failures == 2  # infrastructure retries
    assert cluster.executor.keys_of(uuid) == []  # no runner got it: no admin keys either
    assert sealed_token(cluster, "alice@example.com") is None
    # the next request, even a read, seals the token: once
    assert cluster.client.get("/info", headers={"Authorization": alice}).status_code == 200
    kept = sealed_token(cluster, "alice@example.com")
    with db(cluster) as session:
        assert unseal(session, kept) == alice
    assert cluster.client.get("/tasks", headers={"Authorization": alice}).status_code == 200
    assert sealed_token(cluster, "alice@example.com") == kept
    again = cluster.wait_dispatched(submit_as(cluster, alice), 1)[0]
    assert cluster.executor.specs[again].s3 == S3Access(S3_URL, "alice@example.com", alice)


def make_pool(cluster, headers, **fields) -> str:
    doc = {"name": "p", "profile": "docker-batch", "instanceCount": 1,
           "preparationTask": {"commandLine": "env"}, **fields}
    response = cluster.client.post("/pools", json=doc, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["uuid"]


def test_a_preparation_run_gets_its_owners_identity_and_granted_credentials(roomy):
    token = roomy.headers["Authorization"]
    granted = roomy.wait_dispatched(make_pool(roomy, roomy.headers, **EXPORT), 1)[0]
    spec = roomy.executor.specs[granted]
    assert spec.s3 == S3Access(S3_URL, OWNER, token)
    env = spec.secret_env
    assert (env["QARNOT_CLIENT_TOKEN"], env["AWS_SECRET_ACCESS_KEY"]) == (token, token)
    roomy.executor.run(granted, stdout=f"{token}\n")
    assert token not in roomy.get(f"/pools/{granted.task_uuid}/stdout").text
    plain = roomy.wait_dispatched(make_pool(roomy, roomy.headers), 1)[0]
    assert roomy.executor.specs[plain].s3 == S3Access(S3_URL, OWNER, token)
    assert "QARNOT_CLIENT_TOKEN" not in roomy.executor.specs[plain].secret_env


def test_an_unknown_token_fails_the_preparation_and_the_pool(roomy):
    alice = {"Authorization": add_user(roomy, "alice@example.com")}
    busy = _fill(roomy, 4)
    uuid = make_pool(roomy, alice)  # no free slot yet
    forget_token(roomy, "alice@example.com")
    for key in busy:
        roomy.executor.run(key)
    pool = wait_for(lambda: (p := row(roomy, Pool, uuid)).state == "Failure" and p)
    assert "qcompute user rotate alice@example.com" in pool.errors[0]["message"]
    assert roomy.executor.keys_of(uuid) == []


def test_an_owner_made_before_sealing_gets_its_token_sealed_at_start(tmp_path, database_url):
    with serving(tmp_path) as cluster:
        forget_token(cluster, OWNER)
    with serving(tmp_path) as cluster:  # read back from qcompute.conf, then sealed
        with db(cluster) as session:
            assert unseal(session, sealed_token(cluster, OWNER)) == cluster.headers["Authorization"]


def test_clients_and_instances_are_told_the_public_url_not_the_bound_address(tmp_path,
                                                                               database_url):
    """Behind a load balancer (replicas): the client config and the exported credentials name
    ``public_url``; the server still serves on its own address."""
    public = "https://qcompute.example.org"
    with serving(tmp_path, public_url=public + "/") as cluster:
        settings = cluster.client.app.state.ctx.settings
        assert settings.api_url == "http://127.0.0.1:8801" and settings.advertised_url == public
        parser = configparser.ConfigParser()
        parser.read(client_config_path(settings))
        assert parser.get("cluster", "url") == public
        uuid = cluster.submit("env", **EXPORT)
        key = cluster.wait_dispatched(uuid, 1)[0]
        env = cluster.executor.specs[key].secret_env
        assert env["QCOMPUTE_CLUSTER_URL"] == env["QARNOT_CLUSTER_URL"] == public
        rotated = cluster.post(f"/admin/users/{OWNER}/token")  # the owner's config, rewritten
        assert rotated.status_code == 200, rotated.text
        parser.read(client_config_path(settings))
        assert parser.get("cluster", "url") == public
        assert parser.get("client", "token") == rotated.json()["token"]
