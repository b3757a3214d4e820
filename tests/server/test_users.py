"""User management: bucket prefixes, token rotation, removal, and rollback when S3 fails."""
from __future__ import annotations

import itertools

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from qcompute.cli.users import _replace_token
from qcompute.server.bootstrap import client_config_path, read_token, write_client_config
from qcompute.server.crypto import Sealer, unseal
from qcompute.server.db import make_engine, make_session_factory, migrate
from qcompute.server.db.models import User
from qcompute.server.services import users as service

from .conftest import engine_url, wait_for


def add(cluster, email: str) -> dict:
    response = cluster.post("/admin/users", json={"email": email})
    assert response.status_code == 201, response.text
    return response.json()


def status_as(cluster, token: str, path: str = "/info") -> int:
    return cluster.client.get(path, headers={"Authorization": token}).status_code


def token_kept(cluster, email: str):
    """The user's sealed token, opened (None if the row has none)."""
    with cluster.client.app.state.ctx.sessions() as session:
        sealed = session.scalar(select(User.sealed_token).where(User.email.endswith(email)))
        return sealed and unseal(session, sealed)


def submit_as(cluster, token: str, command: str = "sleep 9") -> str:
    doc = {"name": "t", "profile": "docker-batch",
           "constants": [{"key": "DOCKER_CMD", "value": command}]}
    response = cluster.client.post("/tasks", json=doc, headers={"Authorization": token})
    assert response.status_code == 201, response.text
    return response.json()["uuid"]


# -- bucket prefixes --------------------------------------------------------------------------

@pytest.fixture
def session(tmp_path, database_url):
    engine = make_engine(engine_url(database_url, tmp_path))
    sealer = Sealer(Fernet.generate_key())
    migrate(engine, sealer)
    with make_session_factory(engine, sealer)() as s:
        service.create_user(s, "owner@example.com", owner=True)
        yield s
    engine.dispose()


def test_no_prefix_starts_with_another(session: Session):
    emails = ["alice@x.org", "alice-1@x.org", "alice1@x.org", "alice.1@x.org", "a-l-i-c-e@x.org",
              "alice-1-5@x.org", "Alice@y.org", "bob@x.org", "bob1@x.org", "---@x.org",
              "x" * 40 + "@x.org", "x" * 40 + "1@x.org"]
    emails += [f"bob{n}@z.org" for n in range(1, 13)]
    prefixes = [service.create_user(session, e)[0].bucket_prefix for e in emails]
    assert len(set(prefixes)) == len(prefixes)
    for a, b in itertools.permutations(prefixes, 2):
        assert not b.startswith(a), (a, b)
    by_email = dict(zip(emails, prefixes, strict=True))
    assert by_email["alice@x.org"] == "alice-2-"
    assert by_email["alice-1@x.org"] == "alice1-3-"  # the slug holds no dash
    assert by_email["---@x.org"].startswith("user-")
    assert all(len(p) <= 63 and p[0].isalnum() and p.endswith("-") for p in prefixes)


def test_prefix_is_never_reused_after_removal(session: Session):
    alice, _ = service.create_user(session, "alice@x.org")
    first = alice.bucket_prefix
    service.remove_user(session, "alice@x.org")
    again, _ = service.create_user(session, "alice@x.org")
    other, _ = service.create_user(session, "alice@y.org")
    assert len({first, again.bucket_prefix, other.bucket_prefix}) == 3
    assert [u.email for u in service.list_users(session)] == [
        "owner@example.com", "alice@x.org", "alice@y.org"]
    with pytest.raises(service.NotFound):
        service.find_user(session, "removed/2/alice@x.org")


def test_an_older_clashing_prefix_is_avoided(session: Session):
    # a prefix of an older naming scheme (slug "a-<n>", id 3) that "a-<n>-" would start
    legacy = User(email="legacy@x.org", token_hash="h" * 64, bucket_prefix="")
    session.add(legacy)
    session.flush()
    legacy.bucket_prefix = clash = f"a-{legacy.id + 1}-3-"
    session.flush()
    user, _ = service.create_user(session, "a@x.org")
    assert user.id == legacy.id + 1 and user.bucket_prefix.startswith(f"a-{user.id}")
    assert not clash.startswith(user.bucket_prefix)
    assert not user.bucket_prefix.startswith(clash)


def test_email_must_fit_an_s3_access_key(cluster):
    response = cluster.post("/admin/users", json={"email": "o'brien@example.com"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_user"
    assert "o'brien@example.com" not in cluster.storage.identities


# -- rotation ---------------------------------------------------------------------------------

def test_rotate_token(cluster):
    alice = add(cluster, "alice@example.com")
    response = cluster.post("/admin/users/alice@example.com/token")
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["token"] != alice["token"]
    assert rotated["bucketPrefix"] == alice["bucketPrefix"] and rotated["isOwner"] is False
    assert status_as(cluster, alice["token"]) == 401
    info = cluster.client.get("/info", headers={"Authorization": rotated["token"]})
    assert info.status_code == 200 and info.json()["bucketPrefix"] == alice["bucketPrefix"]
    assert cluster.storage.identities["alice@example.com"] == (rotated["token"],
                                                                alice["bucketPrefix"])
    assert token_kept(cluster, "alice@example.com") == rotated["token"]


def test_rotate_needs_the_owner_and_a_known_user(cluster):
    alice = add(cluster, "alice@example.com")
    missing = cluster.post("/admin/users/nobody@example.com/token")
    assert missing.status_code == 404 and missing.json()["code"] == "user_not_found"
    refused = cluster.client.post("/admin/users/alice@example.com/token",
                                  headers={"Authorization": alice["token"]})
    assert refused.status_code == 403 and refused.json()["code"] == "owner_only"
    assert status_as(cluster, alice["token"]) == 200


def test_rotating_the_owner_rewrites_the_server_config(cluster):
    old = cluster.headers["Authorization"]
    response = cluster.post("/admin/users/owner@qcompute.local/token")
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    assert status_as(cluster, old) == 401
    assert read_token(client_config_path(cluster.client.app.state.ctx.settings)) == token
    assert cluster.storage.identities["owner@qcompute.local"] == (token, None)
    assert status_as(cluster, token, "/admin/users") == 200
    assert token_kept(cluster, "owner@qcompute.local") == token


def test_the_cli_puts_a_rotated_token_in_its_config(tmp_path):
    config = tmp_path / "client.conf"
    write_client_config(config, cluster_url="http://x", token="old", storage_url="http://s3")
    assert _replace_token(str(config), "new")
    assert read_token(config) == "new" and "http://s3" in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600
    (tmp_path / "empty.conf").write_text("[cluster]\nurl = http://x\n")
    assert not _replace_token(str(tmp_path / "empty.conf"), "new")


# -- removal ----------------------------------------------------------------------------------

def test_remove_user(cluster):
    alice = add(cluster, "alice@example.com")
    done = submit_as(cluster, alice["token"], "true")
    key = cluster.wait_dispatched(done, 1)[0]
    cluster.executor.run(key)
    wait_for(lambda: cluster.client.get(f"/tasks/{done}", headers={
        "Authorization": alice["token"]}).json()["state"] == "Success")
    response = cluster.delete("/admin/users/alice@example.com")
    assert response.status_code == 200, response.text
    assert response.json() == {"email": "alice@example.com", "bucketPrefix": alice["bucketPrefix"],
                               "deletedTasks": 1, "message": "removed"}
    assert cluster.storage.removed == ["alice@example.com"]
    assert "alice@example.com" not in cluster.storage.identities
    assert token_kept(cluster, "/alice@example.com") is None  # the tombstone keeps no token
    assert status_as(cluster, alice["token"]) == 401
    assert [u["email"] for u in cluster.get("/admin/users").json()] == ["owner@qcompute.local"]
    assert cluster.delete("/admin/users/alice@example.com").status_code == 404
    # the same e-mail can come back, with a new token and a new prefix
    again = add(cluster, "alice@example.com")
    assert again["bucketPrefix"] != alice["bucketPrefix"]
    assert status_as(cluster, again["token"]) == 200


def test_owner_cannot_be_removed(cluster):
    response = cluster.delete("/admin/users/owner@qcompute.local")
    assert response.status_code == 403
    assert response.json()["code"] == "owner_cannot_be_removed"
    assert "owner" in response.json()["message"]
    assert cluster.storage.removed == []
    assert status_as(cluster, cluster.headers["Authorization"]) == 200


def test_remove_needs_the_owner_and_a_known_user(cluster):
    alice = add(cluster, "alice@example.com")
    bob = add(cluster, "bob@example.com")
    assert cluster.delete("/admin/users/nobody@example.com").status_code == 404
    refused = cluster.client.delete("/admin/users/bob@example.com",
                                    headers={"Authorization": alice["token"]})
    assert refused.status_code == 403
    assert status_as(cluster, bob["token"]) == 200 and cluster.storage.removed == []


def test_unfinished_tasks_block_removal_unless_forced(cluster):
    alice = add(cluster, "alice@example.com")
    uuid = submit_as(cluster, alice["token"])
    key = cluster.wait_dispatched(uuid, 1)[0]
    blocked = cluster.delete("/admin/users/alice@example.com")
    assert blocked.status_code == 409 and blocked.json()["code"] == "user_has_active_tasks"
    assert status_as(cluster, alice["token"]) == 200 and cluster.storage.removed == []
    forced = cluster.delete("/admin/users/alice@example.com", params={"force": "true"})
    assert forced.status_code == 200 and forced.json()["deletedTasks"] == 1
    wait_for(lambda: key in cluster.executor.cancelled)
    assert status_as(cluster, alice["token"]) == 401
    assert cluster.get(f"/tasks/{uuid}").status_code == 404


# -- no half-written state when S3 fails ------------------------------------------------------

class Refused(RuntimeError):
    pass


def _fail(*_args, **_kwargs):
    raise Refused("weed shell failed")


def test_add_is_rolled_back_when_provisioning_fails(cluster, monkeypatch):
    monkeypatch.setattr(cluster.storage, "provision_user", _fail)
    response = cluster.post("/admin/users", json={"email": "alice@example.com"})
    assert response.status_code == 503 and response.json()["code"] == "storage_unavailable"
    assert "token" not in response.json()
    monkeypatch.undo()
    assert [u["email"] for u in cluster.get("/admin/users").json()] == ["owner@qcompute.local"]
    assert add(cluster, "alice@example.com")["bucketPrefix"]


def test_add_maps_an_invalid_s3_value_to_400(cluster, monkeypatch):
    def invalid(*_args):
        raise ValueError("the access key must be ...")

    monkeypatch.setattr(cluster.storage, "provision_user", invalid)
    response = cluster.post("/admin/users", json={"email": "alice@example.com"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_user"
    monkeypatch.undo()
    assert len(cluster.get("/admin/users").json()) == 1


def test_rotation_is_rolled_back_when_provisioning_fails(cluster, monkeypatch):
    alice = add(cluster, "alice@example.com")
    monkeypatch.setattr(cluster.storage, "provision_user", _fail)
    response = cluster.post("/admin/users/alice@example.com/token")
    assert response.status_code == 503 and "token" not in response.json()
    assert status_as(cluster, alice["token"]) == 200
    assert token_kept(cluster, "alice@example.com") == alice["token"]


def test_removal_is_rolled_back_when_revoking_fails(cluster, monkeypatch):
    alice = add(cluster, "alice@example.com")
    uuid = submit_as(cluster, alice["token"])
    cluster.wait_dispatched(uuid, 1)
    monkeypatch.setattr(cluster.storage, "remove_user", _fail)
    response = cluster.delete("/admin/users/alice@example.com", params={"force": "true"})
    assert response.status_code == 503
    assert status_as(cluster, alice["token"]) == 200
    assert status_as(cluster, alice["token"], f"/tasks/{uuid}") == 200
    assert cluster.executor.cancelled == []
    assert [u["email"] for u in cluster.get("/admin/users").json()][-1] == "alice@example.com"


def test_removing_a_user_takes_their_pools_jobs_and_secrets(cluster):
    response = cluster.post("/admin/users", json={"email": "gone@x.io"})
    token = response.json()["token"]
    headers = {"Authorization": token}
    assert cluster.client.put("/secrets-manager/data/k", json={"Value": "v"},
                              headers=headers).status_code < 300
    assert cluster.client.post("/jobs/", json={"name": "j"}, headers=headers).status_code == 201
    pool = cluster.client.post("/pools", json={"name": "p", "profile": "docker-batch"},
                               headers=headers)
    assert pool.status_code == 201
    refused = cluster.delete("/admin/users/gone@x.io")
    assert refused.status_code == 409 and "1 open pool" in refused.json()["message"]
    assert cluster.delete("/admin/users/gone@x.io?force=true").status_code == 200
    from sqlalchemy import func, select

    from qcompute.server.db.models import Job, Pool, Secret

    with cluster.client.app.state.ctx.sessions() as session:
        for model in (Job, Pool, Secret):
            assert session.scalar(select(func.count()).select_from(model)) == 0


# -- a cluster whose instances run unsandboxed -------------------------------------------------

def test_users_are_refused_on_an_unsandboxed_cluster_unless_allowed(cluster, monkeypatch):
    executor = cluster.client.app.state.ctx.scheduler.executor
    monkeypatch.setattr(executor, "sandboxed", False)
    monkeypatch.setattr(executor, "isolation", "UNSANDBOXED: bwrap not found")
    refused = cluster.post("/admin/users", json={"email": "bob@example.com"})
    assert refused.status_code == 409 and refused.json()["code"] == "unsandboxed_cluster"
    assert "bubblewrap" in refused.json()["message"] and "--allow-unsandboxed" in \
        refused.json()["message"]
    assert [u["email"] for u in cluster.get("/admin/users").json()] == ["owner@qcompute.local"]
    allowed = cluster.post("/admin/users", json={"email": "bob@example.com",
                                                 "allowUnsandboxed": True})
    assert allowed.status_code == 201, allowed.text
    settings = cluster.client.get("/settings").json()
    assert settings["sandboxed"] is False and settings["isolation"].startswith("UNSANDBOXED")
