"""The official SDK's secrets client (``qarnot.Secrets(conn)``: there is no accessor on the
Connection), and a task granted secrets through ``SecretsAccessRights``: it reads them from
``QARNOT_SECRET__<NAME>``, and its output shows ``***`` in their place."""
from __future__ import annotations

import uuid

import pytest
import qarnot
from qarnot.exceptions import SecretConflictException, SecretNotFoundException
from qarnot.secrets import SecretsAccessRights

from tests.helpers import sh

from .helpers import wait_for

pytestmark = pytest.mark.filterwarnings("ignore:(flush|update) is deprecated as of 2.6.0")


@pytest.fixture
def folder() -> str:
    """A fresh top-level secrets folder (the secrets store is per user and lives all session)."""
    return f"compat-{uuid.uuid4().hex[:8]}"


def test_create_get_update_list_delete(qconn, folder):
    secrets = qarnot.Secrets(qconn)
    # the SDK strips "/" at both ends and returns the key
    key = secrets.create_secret(f"/{folder}/db/password/", "s3cr3t-value")
    assert key == f"{folder}/db/password"
    secrets.create_secret(f"{folder}/db/replica/password", "other-value")
    secrets.create_secret(f"{folder}/token", "t0ken-value")
    assert secrets.get_secret(f"{folder}/db/password") == "s3cr3t-value"

    with pytest.raises(SecretConflictException):  # 409
        secrets.create_secret(f"{folder}/db/password", "again")
    secrets.update_secret(f"{folder}/db/password", "n3w-value")  # PATCH {"Value": ...}
    assert secrets.get_secret(f"{folder}/db/password") == "n3w-value"

    assert sorted(secrets.list_secrets(folder)) == [f"{folder}/db/", f"{folder}/token"]
    assert sorted(secrets.list_secrets(f"{folder}/db")) == [f"{folder}/db/password",
                                                             f"{folder}/db/replica/"]
    # recursive: the SDK walks the folders itself and keeps the secrets only
    assert sorted(secrets.list_secrets(folder, recursive=True)) == [
        f"{folder}/db/password", f"{folder}/db/replica/password", f"{folder}/token"]
    assert f"{folder}/" in secrets.list_secrets("")  # the root folder (GET .../search/)

    secrets.delete_secret(f"{folder}/token")
    with pytest.raises(SecretNotFoundException):  # 404
        secrets.get_secret(f"{folder}/token")
    with pytest.raises(SecretNotFoundException):
        secrets.update_secret(f"{folder}/token", "value")
    with pytest.raises(SecretNotFoundException):
        secrets.delete_secret(f"{folder}/token")
    for key in secrets.list_secrets(folder, recursive=True):
        secrets.delete_secret(key)
    assert secrets.list_secrets(folder, recursive=True) == []


def test_task_reads_granted_secrets_masked_in_its_output(qconn, folder):
    secrets = qarnot.Secrets(qconn)
    secrets.create_secret(f"{folder}/db/password", "correct-horse-battery")
    secrets.create_secret(f"{folder}/api/token-v2", "api-token-value")
    secrets.create_secret(f"{folder}/not-granted", "hidden-value")
    env = folder.upper().replace("-", "_")

    task = qconn.create_task("compat-secrets", "docker-batch", 1)
    task.constants["DOCKER_CMD"] = sh(  # secrets are in the environment: a shell reads them
        f'echo "db=$QARNOT_SECRET__{env}_DB_PASSWORD"; '
        f'echo "len=${{#QARNOT_SECRET__{env}_DB_PASSWORD}}"; '
        f'echo "api=$QARNOT_SECRET__{env}_API_TOKEN_V2" >&2; '
        f'echo "other=${{QARNOT_SECRET__{env}_NOT_GRANTED:-unset}}"')
    # the fluent API: each call returns the object
    task.secrets_access_rights = (SecretsAccessRights()
                                  .add_secret_by_key(f"{folder}/db/password")
                                  .add_secrets_by_prefixes([f"{folder}/api/"]))
    task.submit()
    assert wait_for(task) == "Success", task.errors
    assert task.stdout() == f"db=***\nlen={len('correct-horse-battery')}\nother=unset\n"
    assert task.stderr() == "api=***\n"
    assert "correct-horse-battery" not in task.stdout()
    # the rights are echoed back
    rights = qconn.retrieve_task(task.uuid).secrets_access_rights.to_json()
    assert rights == {"bySecret": [{"key": f"{folder}/db/password"}],
                      "byPrefix": [{"prefix": f"{folder}/api/"}]}
    task.delete()
    for key in secrets.list_secrets(folder, recursive=True):
        secrets.delete_secret(key)
